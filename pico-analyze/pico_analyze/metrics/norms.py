"""Matrix norms: Frobenius, nuclear, spectral (float64, on the input's device).

The Frobenius norm scales by the largest magnitude before squaring (see ``_utils.unit_max``),
so it neither overflows nor underflows for any finite float64 input; the singular values come
from LAPACK, which scales internally.
"""

from __future__ import annotations

import torch

from ._utils import as_matrix, as_tensor, float64, norm64, unit_max
from .registry import register_metric
from .singular_values import singular_values

__all__ = ["frobenius_norm", "nuclear_norm", "spectral_norm"]


@register_metric("frobenius_norm", comparative=False)
def frobenius_norm(x: torch.Tensor) -> float:
    """Frobenius norm ``||A||_F = sqrt(sum_ij a_ij^2) = sqrt(sum_i sigma_i^2)``.

    ``x``: any shape (a weight ``(out, in)``, a bias vector, ...), flattened; for a vector this
    is the Euclidean norm.
    """
    x = as_tensor(x, "x")
    norm = norm64(x)
    if 1e-140 < norm < 1e140:  # no square can have over- or underflowed enough to matter
        return norm
    unit, m = unit_max(float64(x))
    return m * float(torch.linalg.vector_norm(unit))


@register_metric("nuclear_norm", comparative=False)
def nuclear_norm(x: torch.Tensor) -> float:
    """Nuclear (trace) norm ``||A||_* = sum_i sigma_i`` of a 2-D ``x`` (``(out, in)``)."""
    return float(singular_values(as_matrix(x, "x")).sum())


@register_metric("spectral_norm", comparative=False)
def spectral_norm(x: torch.Tensor) -> float:
    """Spectral (operator 2-) norm ``||A||_2 = sigma_max`` of a 2-D ``x`` (``(out, in)``)."""
    return float(singular_values(as_matrix(x, "x"))[0])
