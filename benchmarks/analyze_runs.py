"""Synthetic runs for bench_analyze.py: the pico-decoder shapes in our layout and the original's.

Both layouts hold the same kind of content: a PicoDecoder's random initialisation drifting
between checkpoints (its weights), and random activations (one row per sequence, the last
position) and gradients for the modules both pico-trains capture by default (v_proj, o_proj,
down_proj), for a train and an eval split of N sequences.

* ours (``pico``): ``pico_format`` run directory (model files, captures, manifests).
* the original pico-train's (``original``): ``training_config.yaml`` and
  ``checkpoints/step_N/learning_dynamics/{train,val}_{activations,weights,gradients}.pt``
  dicts keyed by the original module names (``_forward_module.module.layers.3.swiglu.w_2``),
  bf16 activations, and a final step holding only the val files, as the original wrote them.

The vocabulary is 1024 instead of 50304: the embeddings are never analysed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pico_analyze.sources.original import original_name
from pico_format import (
    CAPTURE_KINDS,
    CAPTURE_SPLITS,
    EVAL_SPLIT,
    TRAIN_SPLIT,
    CaptureManifest,
    RunInfo,
    RunPaths,
    checkpoint_transaction,
    write_capture,
    write_run_info,
)
from pico_format.modules import DEFAULT_CAPTURE_SUFFIXES, layer_index, module_name
from pico_train.checkpoint import save_model_files
from pico_train.config import ModelConfig
from pico_train.model import PicoDecoder

SHAPES = {"tiny": 96, "small": 384, "medium": 768}  # d_model of the pico-decoder suite
ORIGINAL_PREFIX = "_forward_module.module."


def model_config(shape: str, layers: int) -> ModelConfig:
    d = SHAPES[shape]
    return ModelConfig(
        d_model=d,
        n_layers=layers,
        n_heads=12,
        n_kv_heads=4,
        mlp_hidden=4 * d,
        vocab_size=1024,
        max_seq_len=256,
    )


def _checkpoints(cfg: ModelConfig, n_checkpoints: int, rows: int, seed: int):
    """(step, is_last, {split: {kind: {our module name: tensor}}}, eval ids, train ids)."""
    torch.manual_seed(seed)
    model = PicoDecoder(cfg)
    modules = dict(model.named_modules())
    names = [module_name(i, s) for i in range(cfg.n_layers) for s in DEFAULT_CAPTURE_SUFFIXES]
    g = torch.Generator().manual_seed(seed)
    eval_ids = torch.randint(0, cfg.vocab_size, (rows, 128), generator=g)
    for k in range(n_checkpoints):
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.add_(0.1 * p.std() * torch.randn(p.shape, generator=g))
        train_ids = torch.randint(0, cfg.vocab_size, (rows, 128), generator=g)
        captures = {}
        for split in CAPTURE_SPLITS:
            tensors = {kind: {} for kind in CAPTURE_KINDS}
            for name in names:
                w = modules[name].weight.detach()
                tensors["activations"][name] = torch.randn(rows, w.shape[0], generator=g)
                tensors["weights"][name] = w.clone()
                tensors["gradients"][name] = 1e-3 * torch.randn(w.shape, generator=g)
            captures[split] = tensors
        yield 100 * k, k == n_checkpoints - 1, model, captures, eval_ids, train_ids


def build_pico_run(
    root: Path, shape: str, n_checkpoints: int, rows: int, layers: int, seed: int = 0
) -> Path:
    """A run directory in our format."""
    cfg = model_config(shape, layers)
    run = RunPaths(root)
    write_run_info(
        run,
        RunInfo(
            schema_version=1,
            code_version="bench",
            data_fingerprint="bench",
            model_fingerprint=shape,
        ),
    )
    for step, _, model, captures, eval_ids, train_ids in _checkpoints(
        cfg, n_checkpoints, rows, seed
    ):
        with checkpoint_transaction(run, step) as ckpt:
            save_model_files(ckpt.root, model)
            for split, tensors in captures.items():
                names = list(tensors["weights"])
                ids = eval_ids if split == EVAL_SPLIT else train_ids
                manifest = CaptureManifest(
                    step=step,
                    split=split,
                    modules=names,
                    layers={n: layer_index(n) for n in names},
                    positions="last",
                    position_indices=[127],
                    seq_len=128,
                    token_ids=ids.tolist(),
                )
                write_capture(ckpt, manifest, tensors)
    return root


def build_original_run(
    root: Path, shape: str, n_checkpoints: int, rows: int, layers: int, seed: int = 0
) -> Path:
    """A run in the original pico-train layout (see the module docstring)."""
    cfg = model_config(shape, layers)
    root.mkdir(parents=True, exist_ok=True)
    model_section = {
        "model_type": "pico_decoder",
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "attention_n_heads": cfg.n_heads,
        "attention_n_kv_heads": cfg.n_kv_heads,
        "activation_hidden_dim": cfg.mlp_hidden,
        "vocab_size": cfg.vocab_size,
    }
    config = {"model": model_section, "checkpointing": {"run_name": root.name}}
    (root / "training_config.yaml").write_text(yaml.safe_dump(config))
    for step, last, _, captures, _, _ in _checkpoints(cfg, n_checkpoints, rows, seed):
        folder = root / "checkpoints" / f"step_{step}" / "learning_dynamics"
        folder.mkdir(parents=True, exist_ok=True)
        splits = ((EVAL_SPLIT, "val"),) if last else ((TRAIN_SPLIT, "train"), (EVAL_SPLIT, "val"))
        for split, theirs in splits:
            for kind, by_module in captures[split].items():
                out = {}
                for name, t in by_module.items():
                    key = original_name(name, ORIGINAL_PREFIX)
                    out[key] = t.to(torch.bfloat16) if kind == "activations" else t
                torch.save(out, folder / f"{theirs}_{kind}.pt")
    return root


BUILDERS = {"pico": build_pico_run, "original": build_original_run}
