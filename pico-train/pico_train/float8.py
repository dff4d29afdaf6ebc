"""training.precision: fp8 -- the blocks' projections compute in float8 (torchao).

Read by parallelize.py, before compile and sharding. torchao's float8 training
(`torchao.float8.convert_to_float8_training`, tensorwise dynamic scaling) swaps each block's
`nn.Linear` for a `Float8Linear`: a subclass with the same parameter (fp32 master weight) and the
same module name, whose matrix multiplies cast their inputs, weights and output gradients to
float8 (e4m3 forward, e5m2 gradients) with one scale per tensor (Micikevicius et al. 2022, "FP8
Formats for Deep Learning"). Everything else runs as bf16 does: the embeddings, norms, attention
and the output head (whose loss reads its weight directly, loss.py). So checkpoints, capture and
evaluation see the same module and parameter names as a bf16 run.

Needs a GPU with float8 tensor cores (compute capability 8.9 or higher: Ada, Hopper and later)
and the `torchao` package; anything else is refused before training starts.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

MIN_CAPABILITY = (8, 9)


def float8_problem(device: torch.device) -> str | None:
    """Why fp8 training cannot run on `device`, or None if it can."""
    if device.type != "cuda":
        return f"training.precision=fp8 needs a CUDA GPU; this run is on {device.type}."
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"training.precision=fp8 needs float8 tensor cores (compute capability >= 8.9); "
            f"{name} has {capability[0]}.{capability[1]}. Use bf16."
        )
    if importlib.util.find_spec("torchao") is None:
        return "training.precision=fp8 needs torchao: pip install -e './pico-train[fp8]'."
    return None


def convert_blocks(blocks: nn.ModuleList) -> int:
    """Swap every nn.Linear inside the blocks for torchao's Float8Linear, in place.

    Returns how many were swapped. Names and parameters are unchanged.
    """
    from torchao.float8 import convert_to_float8_training

    before = sum(isinstance(m, nn.Linear) for m in blocks.modules())
    convert_to_float8_training(blocks)
    return before
