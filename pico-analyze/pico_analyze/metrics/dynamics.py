"""Metrics between consecutive checkpoints: relative weight change, gradient cosine similarity.

Both compare two tensors of the same shape (any shape: flattened), computed in float64 on the
first tensor's device, after scaling by the largest magnitude (both are scale invariant), so
any finite magnitude works.
"""

from __future__ import annotations

import torch

from ._utils import as_tensor, float64, on_same_device, unit_max
from .registry import MetricError, register_metric

__all__ = ["gradient_cosine_similarity", "relative_weight_change"]


def _same_shape(a, b, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_tensor(a, names[0])
    b = on_same_device(a, as_tensor(b, names[1]))
    if a.shape != b.shape:
        raise MetricError(
            f"{names[0]} and {names[1]} must have the same shape (the same tensor at two "
            f"checkpoints), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return float64(a).reshape(-1), float64(b).reshape(-1)


@register_metric("relative_weight_change", comparative=True, kinds=("weights",))
def relative_weight_change(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Relative weight change ``||W_t - W_s||_F / ||W_s||_F`` from checkpoint s to t.

    Args:
        previous: ``W_s``, a weight (any shape, e.g. ``(out, in)``) at the earlier checkpoint.
        current: ``W_t``, the same weight at the later checkpoint, same shape.

    The difference is formed in float64, so it is exact for float32/bf16 inputs.
    """
    w_s, w_t = _same_shape(previous, current, ("previous", "current"))
    scale = max(float(w_s.abs().max()), float(w_t.abs().max()))  # the ratio is scale invariant
    if scale > 0.0:
        w_s, w_t = w_s / scale, w_t / scale
    base = torch.linalg.vector_norm(w_s)
    if not float(base) > 0.0:
        raise MetricError(
            "previous is all zeros: the change relative to it is undefined; "
            "use frobenius_norm(current - previous) for the absolute change"
        )
    return float(torch.linalg.vector_norm(w_t - w_s) / base)


@register_metric("gradient_cosine_similarity", comparative=True, kinds=("gradients",))
def gradient_cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Cosine similarity ``<g_1, g_2> / (||g_1|| ||g_2||)`` of two gradients, in [-1, 1].

    ``x`` and ``y`` are the gradients of the same parameter (any shape, flattened) at two
    checkpoints (or from two batches). 1: same direction, 0: orthogonal, -1: opposite.
    """
    g1, g2 = _same_shape(x, y, ("x", "y"))
    (g1, _), (g2, _) = unit_max(g1), unit_max(g2)  # scale invariant; no overflow in the norms
    n1, n2 = torch.linalg.vector_norm(g1), torch.linalg.vector_norm(g2)
    if not (float(n1) > 0.0 and float(n2) > 0.0):
        raise MetricError(
            f"{'x' if not float(n1) > 0.0 else 'y'} is an all-zero gradient: its direction "
            "(and so the cosine similarity) is undefined"
        )
    return float(((g1 / n1) @ (g2 / n2)).clamp(-1.0, 1.0))
