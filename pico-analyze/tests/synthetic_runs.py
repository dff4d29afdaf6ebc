"""Synthetic runs for the pico-analyze tests: our format and the original pico-train layout.

Imported by the tests and by conftest.py (which holds the session fixtures built from it).

Both are built from a real tiny PicoDecoder (2 layers, d=32, 4 heads, 2 kv heads): captures are
true module outputs at the last position and true weight gradients, so component identities can
be checked against the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pico_analyze.sources.original import original_name
from pico_format import (
    CaptureManifest,
    RunInfo,
    RunPaths,
    checkpoint_transaction,
    write_capture,
    write_run_info,
)
from pico_format.modules import (
    DEFAULT_CAPTURE_SUFFIXES,
    layer_index,
    module_name,
)
from pico_train.checkpoint import save_model_files
from pico_train.config import ModelConfig
from pico_train.model import PicoDecoder

CAPTURED = DEFAULT_CAPTURE_SUFFIXES
SEQ, VOCAB = 8, 64


def tiny_config(d: int = 32, layers: int = 2, heads: int = 4, kv: int = 2) -> ModelConfig:
    return ModelConfig(
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv,
        mlp_hidden=2 * d,
        vocab_size=VOCAB,
        max_seq_len=SEQ,
    )


def capture(model: PicoDecoder, ids: torch.Tensor) -> tuple[dict, float]:
    """{kind: {module: tensor}} for the captured modules: last-position outputs, weights,
    dLoss/dW of the batch's mean next-token loss."""
    names = [module_name(i, s) for i in range(model.config.n_layers) for s in CAPTURED]
    modules = dict(model.named_modules())
    acts, hooks = {}, []
    for name in names:
        hooks.append(
            modules[name].register_forward_hook(
                lambda m, i, o, name=name: acts.__setitem__(name, o[:, -1].detach().clone())
            )
        )
    model.zero_grad()
    loss = model(ids[:, :-1], targets=ids[:, 1:])
    loss.backward()
    for h in hooks:
        h.remove()
    weights = {n: modules[n].weight.detach().clone() for n in names}
    grads = {n: modules[n].weight.grad.detach().clone() for n in names}
    return {"activations": acts, "weights": weights, "gradients": grads}, float(loss.detach())


def _batches(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, SEQ + 1), generator=g)


def _train_a_bit(model: PicoDecoder, ids: torch.Tensor, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(2):
        opt.zero_grad()
        model(ids[:, :-1], targets=ids[:, 1:]).backward()
        opt.step()


def make_pico_run(
    root: Path,
    steps=(0, 10, 20),
    d: int = 32,
    n: int = 24,
    seed: int = 0,
    splits=("train", "eval"),
    eval_seed: int = 1234,
    layers: int = 2,
) -> Path:
    """A run directory in our format with the given checkpoint steps."""
    torch.manual_seed(seed)
    model = PicoDecoder(tiny_config(d, layers))
    run = RunPaths(root)
    write_run_info(
        run,
        RunInfo(
            schema_version=1,
            code_version="test",
            data_fingerprint="data",
            model_fingerprint=f"d{d}",
        ),
    )
    eval_ids = _batches(n, eval_seed)  # the same held-out batch at every step and in every run
    for k, step in enumerate(steps):
        if k:
            _train_a_bit(model, _batches(n, seed * 1000 + step))
        with checkpoint_transaction(run, step) as ckpt:
            save_model_files(ckpt.root, model)
            for split in splits:
                ids = eval_ids if split == "eval" else _batches(n, 99 + step)
                tensors, loss = capture(model, ids)
                names = list(tensors["weights"])
                manifest = CaptureManifest(
                    step=step,
                    split=split,
                    modules=names,
                    layers={m: layer_index(m) for m in names},
                    positions="last",
                    position_indices=[SEQ - 1],
                    seq_len=SEQ,
                    token_ids=ids[:, :-1].tolist(),
                    loss=loss,
                )
                write_capture(ckpt, manifest, tensors)
    return root


def make_original_run(
    root: Path, steps=(0, 10, 20), d: int = 32, n: int = 24, prefix: str = "_forward_module.module."
) -> Path:
    """A run in the original pico-train layout: .pt dicts keyed by the original module names,
    bf16 activations, and a final step holding only val files."""
    torch.manual_seed(0)
    cfg = tiny_config(d)
    model = PicoDecoder(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "training_config.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "model_type": "pico_decoder",
                    "d_model": d,
                    "n_layers": cfg.n_layers,
                    "attention_n_heads": cfg.n_heads,
                    "attention_n_kv_heads": cfg.n_kv_heads,
                    "activation_hidden_dim": cfg.mlp_hidden,
                    "vocab_size": VOCAB,
                },
                "checkpointing": {"run_name": root.name},
            }
        )
    )
    val_ids = _batches(n, 1234)
    for k, step in enumerate(steps):
        if k:
            _train_a_bit(model, _batches(n, step))
        folder = root / "checkpoints" / f"step_{step}" / "learning_dynamics"
        folder.mkdir(parents=True)
        final = k == len(steps) - 1
        for split in ("val",) if final else ("train", "val"):
            tensors, _ = capture(model, val_ids if split == "val" else _batches(n, 7 + step))
            for kind, by_module in tensors.items():
                out = {}
                for name, t in by_module.items():
                    key = original_name(name, prefix)
                    out[key] = t.to(torch.bfloat16) if kind == "activations" else t
                torch.save(out, folder / f"{split}_{kind}.pt")
    return root


def add_scores(root: Path, tokens_per_step: int = 64, benchmarks: bool = True) -> Path:
    """Give a synthetic run what pico-train writes beside the captures: a training log (one
    record per step, plus eval records), eval.json per checkpoint and, optionally, lm-eval
    scores (benchmarks.json, written with pico_format.write_benchmarks)."""
    import json
    import math

    from pico_format import list_checkpoints, write_benchmarks, write_json_atomic

    run = RunPaths(root)
    steps = list_checkpoints(run)
    with open(run.log, "w") as f:
        for step in range(1, steps[-1] + 1):
            rec = {"step": step, "loss": 5.0 - 0.1 * step, "lr": 1e-3}
            f.write(json.dumps({**rec, "tokens_seen": step * tokens_per_step}) + "\n")
    for step in steps:
        ckpt = run.checkpoint(step)
        loss = 6.0 - 0.05 * step
        write_json_atomic(
            ckpt.eval, {"step": step, "eval_loss": loss, "eval_perplexity": math.exp(loss)}
        )
        if benchmarks:
            acc = 0.25 + 0.01 * step
            write_benchmarks(
                ckpt,
                {
                    "step": step,
                    "harness": "lm-eval",
                    "harness_version": "0.4.0",
                    "limit": 16,
                    "tasks": {
                        "arc_easy": {
                            "version": 1,
                            "n_shot": 0,
                            "metrics": {"acc": acc, "acc_stderr": 0.1},
                        }
                    },
                },
            )
    return root
