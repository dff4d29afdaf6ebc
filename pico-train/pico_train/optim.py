"""Optimizer and learning-rate schedule.

Reads TrainingConfig and the model's named parameters; writes an AdamW whose weight decay skips
norm weights and the input embedding, and the lr for any step (a pure function of the step, so the
schedule needs no saved state beyond the step counter).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pico_train.config import TrainingConfig


def no_decay(name: str, p: nn.Parameter) -> bool:
    """Norm gains (1-D) and the input embedding are not decayed: decaying a lookup table
    shrinks rare tokens' rows merely for being rare, and decaying gains fights the norm."""
    return p.ndim < 2 or name.endswith("embed_tokens.weight")


def build_optimizer(
    model: nn.Module, training: TrainingConfig
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over two groups (decay / no decay); returns it and its parameter names in order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [(n, p) for n, p in named if not no_decay(n, p)]
    plain = [(n, p) for n, p in named if no_decay(n, p)]
    groups = [
        {"params": [p for _, p in decay], "weight_decay": training.weight_decay},
        {"params": [p for _, p in plain], "weight_decay": 0.0},
    ]
    # Fused kernels for plain CUDA tensors; FSDP2's sharded DTensors take the foreach path.
    on_cuda = all(p.is_cuda and not hasattr(p, "placements") for _, p in named)
    optimizer = torch.optim.AdamW(
        groups,
        lr=training.lr,
        betas=tuple(training.betas),
        eps=training.eps,
        fused=True if on_cuda else None,
    )
    return optimizer, [n for n, _ in decay] + [n for n, _ in plain]


def lr_at(step: int, training: TrainingConfig) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup from lr/warmup_steps to lr over warmup_steps, then cosine or linear decay to
    lr * min_lr_ratio at max_steps (or constant).
    """
    if step < training.warmup_steps:
        return training.lr * (step + 1) / training.warmup_steps
    if training.schedule == "constant":
        return training.lr
    span = max(1, training.max_steps - training.warmup_steps)
    progress = min(1.0, (step - training.warmup_steps) / span)
    floor = training.lr * training.min_lr_ratio
    if training.schedule == "linear":
        return floor + (training.lr - floor) * (1 - progress)
    return floor + (training.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
