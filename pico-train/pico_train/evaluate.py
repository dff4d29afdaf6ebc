"""Held-out evaluation: token-weighted loss and perplexity on the fixed held-out sequences.

Reads the model and the held-out batch (the same for every step and run sharing data); writes
{"eval_loss", "eval_perplexity", "eval_tokens"} into each checkpoint and the log.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from pico_train.distributed import Dist
from pico_train.loss import IGNORE_INDEX


@torch.no_grad()
def heldout_loss(
    model, sequences: torch.Tensor, batch_size: int, dist: Dist, autocast=nullcontext
) -> dict[str, float]:
    """Mean next-token cross-entropy over every held-out token, and exp of it.

    sequences: (N, T+1) token ids. Each rank scores rows rank, rank+W, ...; sums of token losses
    and token counts are added over ranks, so the result is exactly token-weighted.
    """
    was_training = model.training
    model.eval()
    device = dist.device
    rows = sequences[dist.rank :: dist.world_size]
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, rows.shape[0], batch_size):
        chunk = rows[start : start + batch_size].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        with autocast():
            total += model(x, y, reduction="sum").double()  # loss.next_token_loss
        count += (y != IGNORE_INDEX).sum()
    total, count = dist.sum(total), dist.sum(count)
    model.train(was_training)
    loss = (total / count).item()
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 700.0)),
        "eval_tokens": int(count.item()),
    }
