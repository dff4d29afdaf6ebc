"""Learning-dynamics capture: activations, weights and gradients of chosen modules.

Reads the model (where it is: same device, no copy), a CaptureConfig and, per split, this rank's
rows of the captured batch. `train` at checkpoint k is the global batch that the k-th optimizer
step trained on (batch 0 at step 0), seen by the weights after that step; `eval` is the fixed
held-out batch, the same at every step and in every run that shares data settings.
Writes, on rank 0, one folder per split through pico_format (`write_capture` /
`StreamingSafetensorsWriter`): activations (module outputs, reduced over positions by the
policy) and gradients dLoss/dW (fp32, mean over every captured token); the manifest lists the
weights, which readers take from the checkpoint's model.safetensors rather than a second copy.

The capture leaves training untouched: gradients come from `torch.autograd.grad` on a separate
forward/backward (the parameters' .grad buffers are never written), no global RNG is drawn
(sampled positions come from a private generator), and the optimizer and data cursor are not
touched. Rows are gathered across ranks in rank order, so row i is sequence i of the batch.
"""

from __future__ import annotations

import contextlib
import fnmatch

import torch
from torch import nn

from pico_format import (
    RESIDUAL,
    TRAIN_SPLIT,
    CaptureManifest,
    CheckpointPaths,
    layer_index,
    parse_module_name,
    write_capture,
    write_json_atomic,
)
from pico_format.capture import TensorInfo
from pico_format.stream import StreamingSafetensorsWriter
from pico_train.config import CaptureConfig
from pico_train.distributed import Dist


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the module of interest has run."""


def select_modules(model: nn.Module, cfg: CaptureConfig) -> dict[str, nn.Module]:
    """Modules whose names match the patterns (plus each block when residual), layer order."""
    found = {}
    for name, module in model.named_modules():
        block = parse_module_name(name)
        if any(fnmatch.fnmatchcase(name, p) for p in cfg.modules):
            found[name] = module
        elif cfg.residual and block is not None and block[1] == RESIDUAL:
            found[name] = module
    if not found:
        names = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(f"capture.modules {cfg.modules} match no module; names look like {names}.")
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(found.items(), key=lambda kv: (layer_index(kv[0]), order[kv[0]])))


def check_capture_modules(config) -> None:
    """Refuse capture.modules patterns that match nothing, before any file is written.

    The module names come from a model built on the meta device (no memory, no random draws).
    """
    if not config.capture.enabled:
        return
    from pico_train.config import ConfigError
    from pico_train.model import PicoDecoder

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = PicoDecoder(config.model)
    try:
        select_modules(model, config.capture)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def position_indices(cfg: CaptureConfig, seq_len: int) -> list[int] | None:
    """Token positions kept: the last one, a fixed seeded sample, or None (all / mean)."""
    if cfg.positions == "last":
        return [seq_len - 1]
    if cfg.positions == "sample":
        k = min(cfg.n_positions, seq_len)
        generator = torch.Generator().manual_seed(0)  # same positions at every step and run
        return sorted(torch.randperm(seq_len, generator=generator)[:k].tolist())
    return None


def _reduce(out: torch.Tensor, policy: str, idx: list[int] | None) -> torch.Tensor:
    """(B, T, w) module output -> rows: (B, w) for last/mean, (B*k, w) sequence-major else."""
    out = out.detach()
    if policy == "mean":
        return out.float().mean(dim=1)
    if policy == "all":
        return out.flatten(0, 1)
    return out[:, idx].flatten(0, 1)


def _activation_dtype(cfg: CaptureConfig, device: torch.device) -> torch.dtype:
    if cfg.activation_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.activation_dtype == "bf16" else torch.float32


def _width(module: nn.Module, model: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else model.config.d_model


def _gather_uneven(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Concatenate rows from every rank in rank order when ranks hold different row counts."""
    if not dist.enabled:
        return t
    sizes = dist.gather_rows(torch.tensor([t.shape[0]], device=t.device)).tolist()
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = dist.gather_rows(padded).split(max(sizes))
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _forward_pass(model, rows, cfg, autocast, hooks_for, weights=None):
    """Run micro-batches of rows (n, T+1) with hooks; optionally accumulate sum-loss gradients.

    Returns (loss_sum, n_tokens, grad_sums or None) as device tensors.
    """
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights] if weights else None
    # A rank with no rows (batch smaller than the number of ranks) runs no forward at all; the
    # collectives that follow are the same on every rank.
    for chunk in rows.split(cfg.micro_batch_size) if rows.shape[0] else ():
        chunk = chunk.to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        handles = hooks_for()
        try:
            with torch.enable_grad() if weights else torch.no_grad(), autocast():
                loss = model(x, y, reduction="sum")  # summed token losses (loss.next_token_loss)
            if weights:
                for acc, g in zip(grads, torch.autograd.grad(loss, weights)):
                    acc += g.float()
            loss_sum += loss.detach().double()
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
    return loss_sum, rows.shape[0] * (rows.shape[1] - 1), grads


def capture_split(model, modules, rows, cfg, dist, autocast, idx, with_activations=True):
    """Activations (gathered), weights and mean gradients of one split, plus the batch loss.

    rows: this rank's (n_r, T+1) share of the captured batch. The gradient of module weight W is
    (1 / N_tokens) * sum over every captured token of dLoss_token/dW, N_tokens counted over all
    ranks, so its scale does not depend on the batch size. With with_activations=False (the
    positions=all case, streamed separately) no activation is kept.
    """
    device = next(model.parameters()).device
    act_dtype = _activation_dtype(cfg, device)
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hooks_for():
        if not with_activations:
            return []

        def make(name):
            return lambda m, i, out: acts[name].append(
                _reduce(out, cfg.positions, idx).to(act_dtype)
            )

        return [mod.register_forward_hook(make(name)) for name, mod in modules.items()]

    with_weight = {n: m.weight for n, m in modules.items() if isinstance(m, nn.Linear)}
    loss_sum, tokens, grads = _forward_pass(
        model, rows, cfg, autocast, hooks_for, list(with_weight.values())
    )
    total_tokens = dist.sum(torch.tensor(float(tokens), dtype=torch.float64, device=device))
    loss = (dist.sum(loss_sum) / total_tokens).item()
    activations = None
    if with_activations:
        activations = {}
        for name, parts in acts.items():
            if rows.shape[0] and not parts:
                raise RuntimeError(f"capture: the forward hook on {name} never ran.")
            width = _width(modules[name], model)
            local = (
                torch.cat(parts)
                if parts
                else torch.zeros((0, width), dtype=act_dtype, device=device)
            )
            activations[name] = _gather_uneven(local, dist)
    gradients = {n: (dist.sum(g) / total_tokens).float() for n, g in zip(with_weight, grads or [])}
    # The weights themselves are in the checkpoint's model.safetensors: only their layout here.
    weights = {n: TensorInfo(list(w.shape), "float32") for n, w in with_weight.items()}
    return activations, weights, gradients, loss


def _stream_all_positions(model, modules, rows, cfg, dist, autocast, path, n_rows, seq_len):
    """positions=all: one module at a time, each forward stopped right after that module."""
    device = next(model.parameters()).device
    dtype = _activation_dtype(cfg, device)
    layout = {n: ((n_rows * seq_len, _width(m, model)), dtype) for n, m in modules.items()}
    writer = StreamingSafetensorsWriter(path, layout) if dist.is_main else None
    for name, module in modules.items():
        parts: list[torch.Tensor] = []

        def hook(m, i, out, parts=parts):
            parts.append(_reduce(out, "all", None).to(dtype))
            raise _StopForward

        _forward_pass(
            model, rows, cfg, autocast, lambda m=module, h=hook: [m.register_forward_hook(h)]
        )
        local = (
            torch.cat(parts)
            if parts
            else torch.zeros((0, layout[name][0][1]), dtype=dtype, device=device)
        )
        gathered = _gather_uneven(local, dist)
        if writer is not None:
            writer.write(name, gathered)
        del parts, local, gathered
    if writer is not None:
        writer.close()
    return {
        n: TensorInfo(list(shape), str(dt).removeprefix("torch."))
        for n, (shape, dt) in layout.items()
    }


def rows_for_capture(split: str, rows: torch.Tensor, batch_size: int, dist: Dist):
    """This rank's share of the first `batch_size` sequences of a split's batch.

    The first batch_size rows are split contiguously and evenly over ranks (shares differ by at
    most one row), so gathering the shares in rank order gives the batch in its global order.
    eval: `rows` is the whole held-out batch on every rank. train: `rows` is this rank's
    contiguous slice of the global batch; the slices' leading rows are gathered first (every
    rank calls this, in the same split order). Keeping each rank's own part of the first
    batch_size rows instead left later ranks with no rows at all when batch_size was below one
    rank's share, and an empty forward on CUDA failed on that rank alone.
    """
    if split == TRAIN_SPLIT and dist.enabled:
        keep = max(0, min(rows.shape[0], batch_size - dist.rank * rows.shape[0]))
        rows = _gather_uneven(rows[:keep].to(dist.device), dist).cpu()
    return rows[:batch_size].tensor_split(dist.world_size)[dist.rank]


# Compiled modules (FSDP2 compiles each block in place) run eagerly here: a graph compiled before
# the capture's forward hooks existed would run without them, since Dynamo does not guard on
# module hooks, and the capture would silently hold no activations.
@torch.compiler.set_stance("force_eager")
def capture_learning_dynamics(
    model: nn.Module,
    cfg: CaptureConfig,
    step: int,
    batches: dict[str, torch.Tensor],
    dist: Dist,
    tokenizer,
    ckpt: CheckpointPaths | None,
    autocast=contextlib.nullcontext,
):
    """Capture every configured split; rank 0 writes into `ckpt` (None on other ranks).

    batches: split -> this rank's rows (n_r, T+1) of that split's captured batch (see
    `rows_for_capture`). Every rank must call this (it gathers across ranks).
    """
    modules = select_modules(model, cfg)
    streamed = cfg.positions == "all"
    for split in cfg.splits:
        rows = batches[split]
        seq_len = rows.shape[1] - 1
        idx = position_indices(cfg, seq_len)
        token_ids = _gather_uneven(rows[:, :-1].to(dist.device), dist).cpu()
        activations, weights, gradients, loss = capture_split(
            model, modules, rows, cfg, dist, autocast, idx, with_activations=not streamed
        )
        manifest = CaptureManifest(
            step=step,
            split=split,
            modules=list(modules),
            layers={n: layer_index(n) for n in modules},
            positions=cfg.positions,
            position_indices=idx,
            seq_len=seq_len,
            token_ids=token_ids.tolist(),
            loss=loss,
            activation_dtype=str(_activation_dtype(cfg, dist.device)).removeprefix("torch."),
        )
        if ckpt is not None:
            ckpt.capture_dir(split).mkdir(parents=True, exist_ok=True)
        info = None
        if streamed:
            path = ckpt.capture_file(split, "activations") if ckpt is not None else None
            info = _stream_all_positions(
                model, modules, rows, cfg, dist, autocast, path, len(token_ids), seq_len
            )
        if ckpt is None:
            continue
        texts = [tokenizer.decode(ids) for ids in manifest.token_ids] if tokenizer else None
        tensors = {"gradients": gradients}
        if activations is not None:
            tensors["activations"] = activations
        write_capture(ckpt, manifest, tensors, texts, weights_in_model=weights)
        if info is not None:  # streamed file already on disk: add its entry to the manifest
            manifest.tensors["activations"] = info
            write_json_atomic(ckpt.capture_manifest(split), manifest.to_json())
