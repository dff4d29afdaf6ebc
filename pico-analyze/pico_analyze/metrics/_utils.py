"""Input checking and dtype handling shared by the metric modules (private)."""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Any

import torch

from .registry import MetricError


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a real, non-empty, finite tensor (array-likes are converted)."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise MetricError(f"{name} must be a torch.Tensor, got {type(x).__name__}") from err
    if x.is_complex():
        raise MetricError(f"{name} is complex ({x.dtype}); metrics take real tensors")
    if x.numel() == 0:
        raise MetricError(
            f"{name} is empty (shape {tuple(x.shape)}); pass a tensor with at least one element"
        )
    # One reduction decides the common case: a sum is finite only if every term is (NaN and
    # Inf propagate); only a non-finite sum (or an overflowing one) needs the elementwise check.
    if x.is_floating_point() and not _known_finite(x):
        if not math.isfinite(float(x.sum())):
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                n_nan = int(torch.isnan(x).sum())
                n_inf = int(bad.sum()) - n_nan
                raise MetricError(
                    f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf out of "
                    f"{x.numel()}); remove or replace them (e.g. torch.nan_to_num) before "
                    "measuring"
                )
        memo = FINITE.get()
        if memo is not None:
            memo[id(x)] = (x, x._version)
    return x


# Tensors already found finite, {id: (tensor, version)}, while a runner's measuring context is
# open (pico_analyze.metrics.singular_values.SharedSingularValues): the many metrics of one
# matrix check it once. Holding the tensor keeps its id from being reused.
FINITE: ContextVar[dict[int, tuple[torch.Tensor, int]] | None] = ContextVar(
    "pico_finite", default=None
)


def _known_finite(x: torch.Tensor) -> bool:
    memo = FINITE.get()
    if memo is None:
        return False
    hit = memo.get(id(x))
    return hit is not None and hit[0] is x and hit[1] == x._version


def as_matrix(x: Any, name: str) -> torch.Tensor:
    """``x`` checked by :func:`as_tensor` and required to be 2-D."""
    x = as_tensor(x, name)
    if x.ndim != 2:
        hint = (
            f"; flatten leading dimensions first, e.g. {name}.reshape(-1, {name}.shape[-1])"
            if x.ndim > 2
            else "; pass a 2-D matrix (activations: (n_samples, n_features), weights: (out, in))"
        )
        raise MetricError(f"{name} must be 2-D, got shape {tuple(x.shape)}{hint}")
    return x


def on_same_device(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` moved to ``x``'s device if needed."""
    return y if y.device == x.device else y.to(x.device)


def float64(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64 on its device (on CPU for devices without float64, such as MPS)."""
    if x.device.type == "mps":
        x = x.cpu()
    return x.to(torch.float64)


def norm64(x: torch.Tensor, ord: float = 2) -> float:
    """``||x||_ord`` of the flattened ``x``, accumulated in float64 without a float64 copy of
    ``x`` (``torch.linalg.vector_norm(..., dtype=float64)`` casts entry by entry): the same value
    as the norm of ``float64(x)``. ord 1 sums ``|x_i|`` without an ``|x|`` copy either.
    A strided view (e.g. one head of the heads laid side by side) is summed as its contiguous
    copy, so the value does not depend on the layout (the reduction order follows it)."""
    if x.device.type == "mps":
        x = x.cpu()
    if not x.is_contiguous():
        x = x.contiguous()
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return float(torch.linalg.vector_norm(x, ord, dtype=torch.float64))


def unit_max(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(x / m, m)`` with ``m = max_i |x_i|`` (``m = 1`` for an all-zero ``x``).

    Sums of squares of ``x / m`` can neither overflow nor lose the largest entries to underflow
    (float64 squares overflow beyond ~1.3e154 and vanish below ~1e-162), so a norm computed as
    ``m * ||x / m||`` is exact to rounding at any magnitude. Scale-invariant metrics (Hoyer,
    cosine similarity, CKA) use ``x / m`` directly.
    """
    if x.is_floating_point():  # max(-min, max): no |x| copy
        low, high = torch.aminmax(x)
        m = max(-float(low), float(high))
    else:
        m = float(x.abs().max())
    if m == 0.0 or m == 1.0:
        return x, 1.0
    return x / m, m


def working_eps(dtype: torch.dtype) -> float:
    """Machine epsilon used for rank tolerances of an input stored in ``dtype``.

    float32/float64 use their own epsilon; half types (bf16, fp16) use float32's, as numpy
    does for float16 (its SVD runs in float32); integer and bool inputs are exact, so float64's.
    """
    if dtype in (torch.float32, torch.float64):
        return torch.finfo(dtype).eps
    if dtype.is_floating_point:
        return torch.finfo(torch.float32).eps
    return torch.finfo(torch.float64).eps


def default_rtol(shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """Relative rank tolerance like ``numpy.linalg.matrix_rank``: ``max(shape) * eps``."""
    return max(shape) * working_eps(dtype)


def check_rtol(rtol: float | None, shape: tuple[int, ...], dtype: torch.dtype) -> float:
    if rtol is None:
        return default_rtol(shape, dtype)
    rtol = float(rtol)
    if not 0.0 <= rtol < 1.0:
        raise MetricError(f"rtol must be in [0, 1), got {rtol}")
    return rtol
