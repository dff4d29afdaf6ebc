"""Time a full pico-analyze analysis of a small-preset-shaped run.

    OMP_NUM_THREADS=1 python benchmarks/bench_analyze.py [--workers N] [--device cpu]

Builds a synthetic run (in a temporary folder unless --run-dir is given) of the `small` preset's
shape: d_model 384, 12 layers, 12 heads, 4 kv heads, MLP 1536 (vocabulary 1024 instead of 50304:
the embeddings are never analysed and would only add disk traffic), 5 checkpoints. Weights are a
PicoDecoder's random initialisation drifting between checkpoints, saved with
`save_model_files`; captures (train and eval, 128 sequences, positions last, the pico-train
default modules v_proj, o_proj, down_proj) are random activations and gradients written with
`pico_format.write_capture`. Then every registered metric is applied to every component it can
measure (simple activations/weights/gradients, OV circuit activations/weights/gradients per head
and concatenated, QK circuit weights) on the eval split, and the time per checkpoint is printed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from pico_analyze import analyze_run
from pico_analyze.metrics import get_metric, list_metrics
from pico_format import (
    CAPTURE_SPLITS,
    DEFAULT_CAPTURE_SUFFIXES,
    EVAL_SPLIT,
    CaptureManifest,
    RunInfo,
    RunPaths,
    checkpoint_transaction,
    write_capture,
    write_run_info,
)
from pico_format.modules import layer_index, module_name
from pico_train.checkpoint import save_model_files
from pico_train.config import ModelConfig
from pico_train.model import PicoDecoder

MODULES = DEFAULT_CAPTURE_SUFFIXES


def build_run(root: Path, n_checkpoints: int, n_rows: int, layers: int, seed: int = 0) -> Path:
    cfg = ModelConfig(
        d_model=384,
        n_layers=layers,
        n_heads=12,
        n_kv_heads=4,
        mlp_hidden=1536,
        vocab_size=1024,
        max_seq_len=256,
    )
    torch.manual_seed(seed)
    model = PicoDecoder(cfg)
    modules = dict(model.named_modules())
    names = [module_name(i, suffix) for i in range(layers) for suffix in MODULES]
    run = RunPaths(root)
    write_run_info(
        run,
        RunInfo(
            schema_version=1,
            code_version="bench",
            data_fingerprint="bench",
            model_fingerprint="small",
        ),
    )
    g = torch.Generator().manual_seed(seed)
    eval_ids = torch.randint(0, cfg.vocab_size, (n_rows, 128), generator=g).tolist()
    for k in range(n_checkpoints):
        step = 100 * k
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.add_(0.1 * p.std() * torch.randn(p.shape, generator=g))
        with checkpoint_transaction(run, step) as ckpt:
            save_model_files(ckpt.root, model)
            for split in CAPTURE_SPLITS:
                ids = (
                    eval_ids
                    if split == EVAL_SPLIT
                    else torch.randint(0, cfg.vocab_size, (n_rows, 128), generator=g).tolist()
                )
                tensors = {"activations": {}, "weights": {}, "gradients": {}}
                for name in names:
                    w = modules[name].weight.detach()
                    tensors["activations"][name] = torch.randn(n_rows, w.shape[0], generator=g)
                    tensors["weights"][name] = w.clone()
                    tensors["gradients"][name] = 1e-3 * torch.randn(w.shape, generator=g)
                manifest = CaptureManifest(
                    step=step,
                    split=split,
                    modules=names,
                    layers={n: layer_index(n) for n in names},
                    positions="last",
                    position_indices=[127],
                    seq_len=128,
                    token_ids=ids,
                )
                write_capture(ckpt, manifest, tensors)
    return root


def full_config(workers: int | None, device: str, share_svd: bool) -> dict:
    """Every registered metric on every component it measures (eval split)."""
    simple = {
        kind: [{"type": "simple", "kind": kind, "module": m} for m in MODULES]
        for kind in ("activations", "weights", "gradients")
    }
    ov = {
        kind: [{"type": "ov_circuit", "kind": kind, "heads": "both"}]
        for kind in ("activations", "weights", "gradients")
    }
    qk = [{"type": "qk_circuit", "kind": "weights", "heads": "both"}]
    metrics = []
    for name in list_metrics():
        spec = get_metric(name)
        comps = [c for kind in spec.kinds for c in simple[kind] + ov[kind]]
        comps += qk if "weights" in spec.kinds else []
        entry = {"metric": name, "components": comps, "splits": ["eval"]}
        if spec.comparative:
            entry["target"] = "last" if spec.kinds == ("activations",) else "previous"
        metrics.append(entry)
    return {
        "metrics": metrics,
        "plots": False,
        "progress": False,
        "device": device,
        "workers": workers,
        "share_singular_values": share_svd,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rows", type=int, default=128, help="captured sequences")
    parser.add_argument("--workers", type=int, default=None, help="default: automatic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-shared-svd", action="store_true", help="one SVD per metric instead of one per matrix"
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the synthetic run here")
    args = parser.parse_args()
    logging.getLogger("pico_analyze").setLevel(logging.ERROR)  # notes are counted below
    with tempfile.TemporaryDirectory() as tmp:
        root = args.run_dir or Path(tmp) / "small"
        t0 = time.perf_counter()
        if not (root / "checkpoints").is_dir():
            build_run(root, args.checkpoints, args.rows, args.layers)
        built = time.perf_counter() - t0
        cfg = full_config(args.workers, args.device, not args.no_shared_svd)
        t0 = time.perf_counter()
        result = analyze_run(root, cfg, Path(tmp) / "analysis")
        took = time.perf_counter() - t0
        n = len(result.steps[result.runs[0]])
        stats = result.stats
        bad = sum(1 for r in result.rows if r.note)
        print(
            f"run: d_model 384, {args.layers} layers, 12 heads / 4 kv heads, MLP 1536, "
            f"{n} checkpoints, {args.rows} sequences (built in {built:.1f} s)"
        )
        print(
            f"analysis: {len(cfg['metrics'])} metrics, {len(result.rows)} values "
            f"({bad} with a note, e.g. CCA refusing features >= samples), device "
            f"{args.device}, workers {args.workers or 'auto'}, shared SVD "
            f"{not args.no_shared_svd}"
        )
        print(
            f"loads {len(stats.loads)} ({stats.seconds_load:.1f} s summed over workers), "
            f"compute {stats.seconds_compute:.1f} s summed over workers"
        )
        print(f"total {took:.1f} s = {took / n:.2f} s per checkpoint")


if __name__ == "__main__":
    main()
