"""Spectral metrics of a single matrix: effective rank, proportional effective rank, stable rank,
condition number.

Inputs are 2-D: weights ``(out, in)``, activations ``(n_samples, n_features)`` or gradients of
a weight matrix. Singular values come from ``singular_values`` (metrics/singular_values.py) in
float64 on the input's device: no singular vectors, and one decomposition shared by every
spectral metric of a matrix inside the runner.
"""

from __future__ import annotations

import torch

from ._utils import as_matrix, check_rtol
from .registry import MetricError, register_metric
from .singular_values import singular_values

__all__ = [
    "condition_number",
    "effective_rank",
    "proportional_effective_rank",
    "stable_rank",
]


def _singular_values(x, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    x = as_matrix(x, name)
    s = singular_values(x)  # float64, memoised on the stored tensor
    return x, s


def _zero_matrix(what: str) -> MetricError:
    return MetricError(f"{what} of an all-zero matrix is undefined (every singular value is 0)")


@register_metric("effective_rank", comparative=False)
def effective_rank(x: torch.Tensor, *, rtol: float | None = None) -> float:
    """Effective rank (Roy & Vetterli 2007, "The effective rank: a measure of effective
    dimensionality").

    ``erank(A) = exp(H(p))`` with ``p_i = sigma_i / sum_j sigma_j`` and
    ``H(p) = -sum_i p_i log p_i`` (``0 log 0 = 0``). Singular values
    ``<= rtol * sigma_max`` count as zero (default ``rtol = max(shape) * eps`` of the input
    dtype, as ``numpy.linalg.matrix_rank``). Ranges from 1 (rank one) to ``min(shape)`` (all
    singular values equal, e.g. the identity).

    Args:
        x: 2-D tensor, e.g. a weight ``(out, in)`` or activations ``(n_samples, n_features)``.
    """
    x, s = _singular_values(x)
    if not float(s[0]) > 0.0:
        raise _zero_matrix("effective rank")
    s = s[s > check_rtol(rtol, tuple(x.shape), x.dtype) * s[0]]
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


@register_metric("proportional_effective_rank", comparative=False)
def proportional_effective_rank(x: torch.Tensor, *, rtol: float | None = None) -> float:
    """Proportional effective rank (PER): ``effective_rank(A) / min(shape)``, in (0, 1].

    Normalising by the largest possible rank makes layers of different widths comparable; this
    is the "PER" of the original pico-analyze. See :func:`effective_rank` (Roy & Vetterli 2007)
    for the formula and ``rtol``. ``x`` is 2-D (weights ``(out, in)`` or activations
    ``(n_samples, n_features)``).
    """
    x = as_matrix(x, "x")
    return effective_rank(x, rtol=rtol) / min(x.shape)


@register_metric("stable_rank", comparative=False)
def stable_rank(x: torch.Tensor) -> float:
    """Stable rank ``||A||_F^2 / ||A||_2^2 = sum_i sigma_i^2 / sigma_max^2`` (Rudelson &
    Vershynin 2007, "Sampling from large matrices: an approach through geometric functional
    analysis"). At most the rank, insensitive to tiny singular values. ``x`` is 2-D
    (``(out, in)`` or ``(n_samples, n_features)``).
    """
    _, s = _singular_values(x)
    if not float(s[0]) > 0.0:
        raise _zero_matrix("stable rank")
    return float((s / s[0]).square().sum())


@register_metric("condition_number", comparative=False)
def condition_number(x: torch.Tensor, *, rtol: float | None = None) -> float:
    """2-norm condition number ``sigma_max / sigma_min`` over the ``min(shape)`` singular values.

    Computed in float64. A matrix whose numerical rank (singular values above
    ``rtol * sigma_max``; default ``rtol = max(shape) * eps`` of the input dtype, as
    ``numpy.linalg.matrix_rank``) is below ``min(shape)`` raises :class:`MetricError`: its
    condition number is infinite and any finite value would be round-off. Pass a smaller
    ``rtol`` to accept nearly singular matrices. ``x`` is 2-D (``(out, in)`` or
    ``(n_samples, n_features)``); for non-square inputs this is the ratio of the extreme
    singular values, as ``numpy.linalg.cond``.
    """
    x, s = _singular_values(x)
    tol = check_rtol(rtol, tuple(x.shape), x.dtype)
    k = min(x.shape)
    rank = int((s > tol * s[0]).sum()) if float(s[0]) > 0.0 else 0
    if rank < k:
        raise MetricError(
            f"x is rank-deficient: numerical rank {rank} < min(shape) = {k} (singular values "
            f"<= {tol:.3g} * sigma_max count as zero), so its condition number is infinite. "
            "Measure effective_rank or stable_rank instead, or pass a smaller rtol"
        )
    return float(s[0] / s[-1])
