"""Sparsity measures of a tensor's entries: Gini index and Hoyer sparsity.

Both take a tensor of any shape (weights, activations, gradients), flattened, and measure the
magnitudes ``c = |x|``. Computed in float64; magnitudes whose sums or squares could over- or
underflow are first divided by ``max |x|`` (both measures are scale invariant), so any finite
magnitude works. Both are 0 for a constant-magnitude tensor and
increase towards 1 as the mass concentrates in few entries.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ._utils import as_tensor, float64, unit_max
from .registry import MetricError, register_metric

__all__ = ["gini", "hoyer"]


# Magnitudes in this range can be summed (N terms, N < 1e12) and squared in float64 without
# overflow or underflow; outside it they are divided by their maximum first.
SAFE_RANGE = (1e-140, 1e140)


def _sorted_magnitudes(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` flattened, ascending, float64.

    On CPU the sort runs in numpy, whose vectorised sort is an order of magnitude faster than
    torch's here (numpy's sort and abs use no BLAS, so no thread pool beyond torch's). It runs
    in the stored dtype (casting to float64 is monotone, so the order is the same); the float64
    copy is made after it.
    """
    c = x.detach()
    if c.device.type == "cpu" and c.dtype in (torch.float32, torch.float64):
        a = np.abs(c.numpy()).reshape(-1)  # |x| is a fresh array: flattening it is free
        a.sort()
        return torch.from_numpy(a.astype(np.float64, copy=False))
    return float64(torch.sort(c.abs().reshape(-1)).values)


@lru_cache(maxsize=8)
def _rank_weights(n: int, device: torch.device) -> torch.Tensor:
    """k = 1..N as float64 (cached: the same sizes recur for every layer and step)."""
    return torch.arange(1, n + 1, dtype=torch.float64, device=device)


@register_metric("gini", comparative=False)
def gini(x: torch.Tensor) -> float:
    """Gini index of the magnitudes (Hurley & Rickard 2009, "Comparing measures of sparsity").

    With ``c_(1) <= ... <= c_(N)`` the sorted absolute values,
    ``G = 1 - 2 sum_k (c_(k) / ||c||_1) (N - k + 1/2) / N``
    ``  = 1 - 2 ((N + 1/2) ||c||_1 - sum_k k c_(k)) / (N ||c||_1)``.
    0 for equal magnitudes, ``1 - 1/N`` for a single non-zero entry. ``x`` has any shape
    (flattened, N = numel).
    """
    c = _sorted_magnitudes(as_tensor(x, "x"))
    top = float(c[-1])
    if not top > 0.0:
        raise MetricError("Gini index of an all-zero tensor is undefined (it has no mass)")
    if not SAFE_RANGE[0] < top < SAFE_RANGE[1]:
        c = c / top  # scale invariant
    n = c.shape[0]
    total, weighted = float(c.sum()), float(c @ _rank_weights(n, c.device))
    return 1.0 - 2.0 * ((n + 0.5) * total - weighted) / (n * total)


@register_metric("hoyer", comparative=False)
def hoyer(x: torch.Tensor) -> float:
    """Hoyer sparsity (Hoyer 2004, "Non-negative matrix factorization with sparseness
    constraints"): ``(sqrt(N) - ||c||_1 / ||c||_2) / (sqrt(N) - 1)``.

    0 for equal magnitudes, 1 for a single non-zero entry. ``x`` has any shape (flattened,
    N = numel >= 2).
    """
    c = float64(as_tensor(x, "x")).abs().reshape(-1)  # |x| is fresh: flattening it is free
    n = c.numel()
    if n < 2:
        raise MetricError("Hoyer sparsity needs at least 2 entries (it divides by sqrt(N) - 1)")
    l1, l2 = float(c.sum()), float(torch.linalg.vector_norm(c))
    if not SAFE_RANGE[0] < l2 < SAFE_RANGE[1] or not math.isfinite(l1):
        c, _ = unit_max(c)  # scale invariant: rescale when squares could over- or underflow
        l1, l2 = float(c.sum()), float(torch.linalg.vector_norm(c))
    if not l2 > 0.0:
        raise MetricError("Hoyer sparsity of an all-zero tensor is undefined (it has no mass)")
    ratio = l1 / l2
    root = math.sqrt(n)
    return (root - ratio) / (root - 1.0)
