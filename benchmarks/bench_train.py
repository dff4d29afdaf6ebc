"""Training throughput: wall time, tokens/s and model FLOPs utilisation of a real run.

    python benchmarks/bench_train.py                                  # the demo (make demo's run)
    python benchmarks/bench_train.py --config pico-train/configs/small.yaml \
        --set data.dataset=... --set training.max_steps=30               # any config

    python benchmarks/bench_train.py --preset 1b                      # one preset, default config
    torchrun --nproc_per_node 2 benchmarks/bench_train.py --preset 1b \
        --set training.parallelism=fsdp                                  # several GPUs

Trains into a temporary run directory with the real loop (data, checkpoints, captures,
evaluation included) and prints the total time, the steady tokens/s from the log (median over
steps after the second, checkpoint steps excluded), and on CUDA the MFU per GPU against a peak
given by --peak-tflops and the peak memory allocated and reserved on the first GPU (under CUDA
graphs the replays draw on memory reserved when the graphs were recorded, which the allocated
figure counts only then). With --preset the run is the preset with the default config at full
context (2048) for --steps steps; nothing else is changed, so compile, the loss and the
parallelism are what a user gets with no flags. Under torchrun rank 0 prints.
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
    p.add_argument("--config", default=None, help="default: the demo config (without --preset)")
    p.add_argument("--preset", default=None, help="a preset with the default config")
    p.add_argument("--steps", type=int, default=12, help="with --preset: steps to run")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM)"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.config is None and a.preset is None:
        a.config = str(ROOT / "pico-train" / "configs" / "demo.yaml")
    preset = []
    if a.preset is not None:
        preset = [
            f"preset={a.preset}",
            f"training.max_steps={a.steps}",
            "training.warmup_steps=2",
            "checkpointing.every=0",
            "checkpointing.steps=[]",
            "data.eval_sequences=8",
        ]
    rank0 = os.environ.get("RANK", "0") == "0"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.environ.get("BENCH_RUN_DIR", f"{tmp}/run")  # torchrun ranks share one
        config = load_config(
            a.config, [*preset, *a.overrides, f"run_dir={run_dir}", "logging.progress=false"]
        )
        began = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - began
        saves = checkpoint_steps(config)
        log = read_log(RunPaths(result.run_dir).log) if rank0 else []
        rates = [
            r["tokens_per_s"]
            for r in log
            if "tokens_per_s" in r and r["step"] not in saves and r["step"] > 2
        ]
        compiles = [r for r in log if "compile_s" in r]
    if not rank0:
        return
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {a.threads} threads"
    )
    rate = statistics.median(rates) if rates else float("nan")
    name = Path(a.config).name if a.config else "default config"
    training = config.training
    print(
        f"{name} ({config.preset}) on {world} x {device}: {training.max_steps} steps x "
        f"{training.global_batch_size} x {config.seq_len} tokens (micro-batch "
        f"{training.micro_batch_size}, compile {training.compile}, parallelism "
        f"{training.parallelism})"
    )
    print(f"  wall time (incl. data, eval, capture, checkpoints): {wall:.1f} s")
    print(f"  steady training throughput: {rate:,.0f} tokens/s")
    print(
        f"  loss {result.first_loss:.3f} -> {result.last_loss:.3f}, held-out perplexity "
        + (
            f"{ppl:.2f}"
            if (ppl := result.eval.get("eval_perplexity")) is not None
            else "not measured"
        )
    )
    if compiles:
        graphs = " with CUDA graphs" if compiles[0].get("cuda_graphs") else ""
        print(f"  first step (torch.compile{graphs} included): {compiles[0]['compile_s']:.1f} s")
    if torch.cuda.is_available():
        flops = training_flops_per_token(config.model, config.seq_len)
        mfu = rate / world * flops / (a.peak_tflops * 1e12) * 100
        peak = torch.cuda.max_memory_allocated() / 2**30
        held = torch.cuda.max_memory_reserved() / 2**30
        print(f"  MFU per GPU: {mfu:.1f}% of {a.peak_tflops:g} TFLOP/s")
        print(f"  peak memory allocated (GPU 0): {peak:.1f} GiB; reserved: {held:.1f} GiB")


if __name__ == "__main__":
    main()
