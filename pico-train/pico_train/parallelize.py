"""Parallelism applied from outside the model: DDP or FSDP2, activation checkpointing, compile.

Reads the model (model.py, which knows nothing of this), the TrainingConfig and the process group
(distributed.py); returns a :class:`Parallel` that the loop trains through. Also gives the
checkpoint writer what it needs under FSDP: the full (gathered) model and optimizer state, in the
same layout a single process writes, so checkpoints do not depend on the number of processes.

- one process: the model as it is;
- DDP: every rank holds the whole model, gradients are averaged once per optimizer step;
- FSDP2 (`torch.distributed.fsdp.fully_shard`, one unit per block plus the root for embeddings,
  final norm and head): parameters, gradients and optimizer state are sharded over ranks; on
  bf16 runs blocks compute in bf16 from fp32 master weights and gradients are reduced in fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pico_train.config import ConfigError, ModelConfig, RunConfig, TrainingConfig
from pico_train.distributed import Dist
from pico_train.loss import CHUNK_ELEMENTS
from pico_train.model import PicoDecoder, parameter_counts

# DDP while its estimate stays under this share of one device's memory (room for fragmentation,
# the allocator's cache and what the estimate leaves out).
COMFORTABLE = 0.7


@dataclass
class Parallel:
    """How the loop trains: the mode, the callable it runs, and the wrapped modules."""

    mode: str  # "single" | "ddp" | "fsdp"
    model: PicoDecoder  # holds the parameters the optimizer steps (sharded DTensors under fsdp)
    forward: Callable[..., torch.Tensor]  # (input_ids, targets) -> mean loss
    compiled: bool
    ddp: nn.Module | None = None
    cuda_graphs: bool = False  # forward and backward replayed as CUDA graphs (compile_mode)

    def begin_micro_batch(self) -> None:
        """Call before each micro-batch's forward.

        Under CUDA graphs a new replay begins, so the previous replay's outputs may be
        overwritten (the loop keeps none of them: it adds the detached loss to its own sum before
        the next call). Every parameter gets a .grad buffer first: the backward graph's gradients
        are then added into it. Without one, autograd would keep the first micro-batch's graph
        output itself as .grad, and the next replay would overwrite it
        (pytorch/pytorch#169545: wrong or refused gradient accumulation). The loop then zeroes
        the buffers after each step instead of freeing them.
        """
        if not self.cuda_graphs:
            return
        torch.compiler.cudagraph_mark_step_begin()
        for p in self.model.parameters():
            if p.grad is None and p.requires_grad:
                p.grad = torch.zeros_like(p)

    def grad_sync(self, last: bool):
        """Context for one micro-batch's backward: reduce gradients on the last one only."""
        if self.mode == "ddp" and not last:
            return self.ddp.no_sync()
        if self.mode == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return nullcontext()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm; returns it as a plain device tensor."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# ----------------------------------------------------------------------------------------------
# Choosing
# ----------------------------------------------------------------------------------------------


def compile_mode(training: TrainingConfig, device: torch.device, world_size: int) -> str:
    """training.compile resolved: "eager", "compiled" (torch.compile) or "cudagraphs"
    (torch.compile's mode reduce-overhead: each micro-batch's forward and backward replayed as
    CUDA graphs, so the CPU launches two graphs instead of thousands of kernels).

    auto: compiled on CUDA, eager on CPU (compiling costs more than it saves there). CUDA graphs
    only when asked for: on an H200 they were at most 2.5% faster (BENCHMARKS.md, "CUDA
    graphs"; their curves agree with plain compile's to its own run-to-run variation). Asked
    for where they cannot run (CPU, several processes), they are refused.
    """
    choice = training.compile
    if choice == "false" or (choice == "auto" and device.type != "cuda"):
        return "eager"
    if choice in ("true", "auto"):
        return "compiled"
    if device.type != "cuda":
        raise ConfigError(
            f"training.compile=cudagraphs needs a CUDA device (this run is on {device.type}); "
            f"use auto or true."
        )
    if world_size > 1:
        raise ConfigError(
            f"training.compile=cudagraphs runs in one process only (this run has {world_size}); "
            f"use auto or true under torchrun."
        )
    return "cudagraphs"


def recomputed_blocks(training: TrainingConfig, n_layers: int) -> int:
    """How many blocks training.activation_checkpointing recomputes (the first ones): true is
    every block, false none, a number that many."""
    blocks = training.activation_checkpointing
    if isinstance(blocks, bool):
        return n_layers if blocks else 0
    return blocks


def memory_per_gpu(
    shape: ModelConfig, seq_len: int, micro_batch: int, n_gpus: int, recomputed: int
) -> dict[str, float]:
    """Estimated peak bytes per GPU for DDP and FSDP2 (bf16 compute, fp32 AdamW state).

    States: 16 bytes per parameter (fp32 weight, fp32 gradient, two fp32 Adam moments), all on every
    GPU under DDP (plus its fp32 gradient buckets on more than one GPU), 1/n_gpus of them under
    FSDP2 plus every bf16 weight (gathered in the forward pass and kept to the backward) and the
    fp32 gradients of the root (embeddings, head) and two blocks in flight. Activations kept for the
    backward, per token and layer, in bf16: the block input and norm outputs (3d), q/k/v and
    attention output (d + 2 kv + d), o_proj output (d), the MLP's gate, up, silu and product (4h),
    and fp32 residuals (4d words); of each of the `recomputed` blocks (activation checkpointing)
    only its input (fp32), plus one block's worth while it is recomputed. The loss adds about 2 GiB
    (loss.CHUNK_ELEMENTS fp32 block and its gradient). An estimate: measured peaks are in
    BENCHMARKS.md.
    """
    counts = parameter_counts(shape)
    n = counts["total"]
    block = (counts["non_embedding"] - shape.d_model) / shape.n_layers
    root = n - block * shape.n_layers
    kv = shape.n_kv_heads * shape.head_dim
    per_token_layer = 2 * (
        3 * shape.d_model + 2 * shape.d_model + 2 * kv + shape.d_model + 4 * shape.mlp_hidden
    )
    per_token_layer += 4 * 2 * shape.d_model
    tokens = micro_batch * seq_len
    # Peak at the start of the backward pass; a block recomputed later is recomputed when the
    # blocks after it have been freed, so it adds to the peak only when every block is recomputed.
    kept = max(shape.n_layers - recomputed, 1) * per_token_layer
    if recomputed:
        # Measured on an H200 (1b, compiled; BENCHMARKS.md): with recompute the peak runs about
        # two blocks' worth above the count above (13 of 18 blocks: 37.0 GiB, all: 31.9 GiB).
        kept += 2 * per_token_layer
    activations = tokens * (kept + recomputed * 4 * shape.d_model)
    loss = 2 * 4 * CHUNK_ELEMENTS + 4 * shape.vocab_size * shape.d_model
    ddp = (16 if n_gpus == 1 else 20) * n + activations + loss
    fsdp = 16 * n / n_gpus + 2 * n + 4 * (root + 2 * block) + activations + loss
    return {"ddp": float(ddp), "fsdp": float(fsdp)}


def choose_parallelism(config: RunConfig, world_size: int, device_memory: float | None) -> str:
    """training.parallelism resolved: "single" for one process, else "ddp" or "fsdp".

    auto: DDP while its estimate (memory_per_gpu) is under COMFORTABLE x device_memory, FSDP2
    above; CPU processes (device_memory None) use DDP.
    """
    training = config.training
    if world_size == 1:
        return "single"
    if training.parallelism != "auto":
        return training.parallelism
    if device_memory is None:
        return "ddp"
    need = memory_per_gpu(
        config.model,
        config.seq_len,
        training.micro_batch_size,
        world_size,
        recomputed_blocks(training, config.model.n_layers),
    )["ddp"]
    return "ddp" if need <= COMFORTABLE * device_memory else "fsdp"


def device_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return float(torch.cuda.get_device_properties(device).total_memory)


# ----------------------------------------------------------------------------------------------
# Applying
# ----------------------------------------------------------------------------------------------

_checkpointing = {"paused": False}


@contextmanager
def activation_checkpointing_paused():
    """Run blocks plainly inside (the capture's hooks must see each forward exactly once)."""
    before = _checkpointing["paused"]
    _checkpointing["paused"] = True
    try:
        yield
    finally:
        _checkpointing["paused"] = before


def _checkpoint_block(block: nn.Module) -> None:
    """Recompute the block's activations in backward; keeps module and parameter names."""
    forward = block.forward

    def run(*args, **kwargs):
        if _checkpointing["paused"] or not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = run


def parallelize(model: PicoDecoder, config: RunConfig, dist: Dist, bf16: bool) -> Parallel:
    """Apply float8 projections, activation checkpointing, DDP or FSDP2 and compile, per the
    config.

    Call before building the optimizer: under FSDP2 the parameters become sharded DTensors.
    `bf16`: the run computes in bf16 (autocast); FSDP2 then gathers bf16 weights.
    """
    training = config.training
    mode = choose_parallelism(config, dist.world_size, device_memory(dist.device))
    how = compile_mode(training, dist.device, dist.world_size)
    compiled = how != "eager"
    if training.precision == "fp8":  # the device was checked (float8.float8_problem) by train
        from pico_train import float8

        float8.convert_blocks(model.model.layers)
    for block in model.model.layers[: recomputed_blocks(training, len(model.model.layers))]:
        _checkpoint_block(block)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
        )
        for block in model.model.layers:
            if compiled:
                block.compile()  # per block, as torchtitan does: names stay unchanged
            # Weights stay gathered from a block's forward to its backward (one all-gather per
            # micro-batch, not two): 2 bytes a parameter for 1.82x one GPU's speed at 1b on two
            # H200s instead of 1.78x (BENCHMARKS.md, "Two GPUs").
            fully_shard(block, mp_policy=policy, reshard_after_forward=False)
        fully_shard(model, mp_policy=policy)
        return Parallel(mode, model, model, compiled)
    ddp = None
    forward: Callable[..., torch.Tensor] = model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        ddp = forward = DistributedDataParallel(model, device_ids=ids)
        if compiled:
            # One graph, reduced after the backward, instead of Dynamo's graph split at each
            # gradient bucket (which overlaps the reduction but breaks fusion): medium 1.81x ->
            # 1.87x and large 1.85x -> 1.92x one H200's speed on two (BENCHMARKS.md, "Two GPUs").
            torch._dynamo.config.optimize_ddp = False
    if compiled:
        forward = torch.compile(forward, mode="reduce-overhead" if how == "cudagraphs" else None)
    return Parallel(mode, model, forward, compiled, ddp, cuda_graphs=how == "cudagraphs")


# ----------------------------------------------------------------------------------------------
# Full state for checkpoints (every rank calls these: under FSDP2 they gather)
# ----------------------------------------------------------------------------------------------


def full_model(par: Parallel) -> PicoDecoder:
    """The model with all its weights on this rank's device.

    The model itself, except under FSDP2: there an unsharded copy (fp32, a plain PicoDecoder)
    gathered from the shards, so evaluation, capture and the model files run the same code as
    one process. Built on the meta device and filled, so no random number is drawn.
    """
    if par.mode != "fsdp":
        return par.model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(par.model, options=StateDictOptions(full_state_dict=True))
    device = par.model.rope_cos.device
    with torch.device("meta"):
        copy = PicoDecoder(par.model.config)
    copy.to_empty(device=device)
    copy.load_state_dict(state)
    copy.rope_cos.copy_(par.model.rope_cos)
    copy.rope_sin.copy_(par.model.rope_sin)
    return copy


class FullOptimizerState:
    """An optimizer's state_dict()/load_state_dict() in the one-process layout (full tensors,
    parameters numbered in `param_names` order) for an FSDP2-sharded optimizer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]):
        self.model, self.optimizer, self.names = model, optimizer, names
        self._snapshot: dict[str, Any] | None = None

    def gather(self) -> FullOptimizerState:
        """Collect the full state now (a collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        full = get_optimizer_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True)
        )
        index = {name: i for i, name in enumerate(self.names)}
        self._snapshot = {
            "state": {
                index[n]: {k: _cpu(v) for k, v in s.items()} for n, s in full["state"].items()
            },
            "param_groups": [
                {**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]
            ],
        }
        return self

    def state_dict(self) -> dict[str, Any]:
        if self._snapshot is None:
            raise RuntimeError("FullOptimizerState.gather() must run on every rank first.")
        return self._snapshot

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        full = {
            "state": {self.names[i]: s for i, s in state["state"].items()},
            "param_groups": [
                {**g, "params": [self.names[i] for i in g["params"]]} for g in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(
            self.model, self.optimizer, full, options=StateDictOptions(full_state_dict=True)
        )


def _cpu(value):
    return value.detach().cpu() if torch.is_tensor(value) else value


def optimizer_for_checkpoint(par: Parallel, optimizer, names: list[str], gather: bool = False):
    """What save_training_state/load_training_state read and write: the optimizer itself, or
    under FSDP2 its full-state view (gathered now on every rank when `gather`, for saving)."""
    if par.mode != "fsdp":
        return optimizer
    view = FullOptimizerState(par.model, optimizer, names)
    return view.gather() if gather else view
