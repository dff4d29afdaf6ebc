"""Training throughput: wall time, tokens/s and model FLOPs utilisation of a real run.

    python benchmarks/bench_train.py                                  # the demo (make demo's run)
    python benchmarks/bench_train.py --config pico-train/configs/small.yaml \
        --set data.dataset=... --set training.max_steps=30               # any config

Trains into a temporary run directory with the real loop (data, checkpoints, captures,
evaluation included) and prints the total time, the steady tokens/s from the log (median over
steps, checkpoint steps excluded), and on CUDA the MFU against a peak given by --peak-tflops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pico_format import RunPaths
from pico_train.config import checkpoint_steps, load_config
from pico_train.model import training_flops_per_token
from pico_train.monitor import read_log
from pico_train.train import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "pico-train" / "configs" / "demo.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            a.config, [*a.overrides, f"run_dir={tmp}/run", "logging.progress=false"]
        )
        began = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - began
        saves = checkpoint_steps(config)
        rates = [
            r["tokens_per_s"]
            for r in read_log(RunPaths(result.run_dir).log)
            if "tokens_per_s" in r and r["step"] not in saves and r["step"] > 2
        ]
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {a.threads} threads"
    )
    rate = statistics.median(rates) if rates else float("nan")
    print(
        f"{Path(a.config).name} ({config.preset}) on {device}: {config.training.max_steps} "
        f"steps x {config.training.global_batch_size} x {config.seq_len} tokens"
    )
    print(f"  wall time (incl. data, eval, capture, checkpoints): {wall:.1f} s")
    print(f"  steady training throughput: {rate:,.0f} tokens/s")
    print(
        f"  loss {result.first_loss:.3f} -> {result.last_loss:.3f}, held-out perplexity "
        f"{result.eval.get('eval_perplexity', float('nan')):.2f}"
    )
    if torch.cuda.is_available():
        flops = training_flops_per_token(config.model, config.seq_len)
        print(
            f"  MFU: {rate * flops / (a.peak_tflops * 1e12) * 100:.1f}% of "
            f"{a.peak_tflops:g} TFLOP/s"
        )


if __name__ == "__main__":
    main()
