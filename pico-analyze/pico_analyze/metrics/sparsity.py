"""Sparsity measures of a tensor's entries: Gini index and Hoyer sparsity.

Both take a tensor of any shape (weights, activations, gradients), flattened, and measure the
magnitudes ``c = |x|``. Computed in float64, after dividing by ``max |x|`` (both are scale
invariant), so any finite magnitude works. Both are 0 for a constant-magnitude tensor and
increase towards 1 as the mass concentrates in few entries.
"""

from __future__ import annotations

import math

import torch

from ._utils import as_tensor, float64
from .registry import MetricError, register_metric

__all__ = ["gini", "hoyer"]


def _magnitudes(x, what: str) -> torch.Tensor:
    """``|x|`` flattened, in float64, divided by its largest entry (both measures are scale
    invariant, and sums of squares of values <= 1 cannot overflow)."""
    c = float64(as_tensor(x, "x")).reshape(-1).abs()
    top = float(c.max())
    if not top > 0.0:
        raise MetricError(f"{what} of an all-zero tensor is undefined (it has no mass)")
    return c / top


@register_metric("gini", comparative=False)
def gini(x: torch.Tensor) -> float:
    """Gini index of the magnitudes (Hurley & Rickard 2009, "Comparing measures of sparsity").

    With ``c_(1) <= ... <= c_(N)`` the sorted absolute values,
    ``G = 1 - 2 sum_k (c_(k) / ||c||_1) (N - k + 1/2) / N``. 0 for equal magnitudes,
    ``1 - 1/N`` for a single non-zero entry. ``x`` has any shape (flattened, N = numel).
    """
    c = torch.sort(_magnitudes(x, "Gini index")).values
    n = c.numel()
    k = torch.arange(1, n + 1, dtype=c.dtype, device=c.device)
    return float(1.0 - 2.0 * ((c / c.sum()) * (n - k + 0.5)).sum() / n)


@register_metric("hoyer", comparative=False)
def hoyer(x: torch.Tensor) -> float:
    """Hoyer sparsity (Hoyer 2004, "Non-negative matrix factorization with sparseness
    constraints"): ``(sqrt(N) - ||c||_1 / ||c||_2) / (sqrt(N) - 1)``.

    0 for equal magnitudes, 1 for a single non-zero entry. ``x`` has any shape (flattened,
    N = numel >= 2).
    """
    c = _magnitudes(x, "Hoyer sparsity")
    n = c.numel()
    if n < 2:
        raise MetricError("Hoyer sparsity needs at least 2 entries (it divides by sqrt(N) - 1)")
    ratio = float(c.sum() / torch.linalg.vector_norm(c))
    root = math.sqrt(n)
    return (root - ratio) / (root - 1.0)
