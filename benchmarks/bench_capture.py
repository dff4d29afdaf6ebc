"""Cost of a learning-dynamics capture relative to one training step.

    python benchmarks/bench_capture.py                   # small preset; CPU-sized by default
    python benchmarks/bench_capture.py --seq-len 2048 --batch 128 --micro 16   # on a GPU

Times one optimizer step (forward/backward over micro-batches, clip, AdamW; bf16 autocast on
CUDA) on a global batch of --batch sequences, and one capture of both splits (train and eval,
--capture-batch sequences each, default modules, positions last, written to a temporary
checkpoint folder), and prints the ratio. The issue's target is under 3 training steps.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch

from pico_format import RunPaths, checkpoint_transaction
from pico_train.capture import capture_learning_dynamics
from pico_train.config import PRESETS, CaptureConfig, TrainingConfig
from pico_train.distributed import Dist
from pico_train.model import PicoDecoder
from pico_train.optim import build_optimizer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="training global batch")
    p.add_argument("--capture-batch", type=int, default=None)
    p.add_argument("--micro", type=int, default=None)
    p.add_argument("--positions", default="last")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device.type == "cpu"
    seq = a.seq_len or (64 if cpu else 2048)
    batch = a.batch or (32 if cpu else 128)
    cap_batch = a.capture_batch or batch
    micro = a.micro or (16 if cpu else 16)
    torch.manual_seed(0)
    model = PicoDecoder(PRESETS[a.preset]).to(device)
    optimizer, _ = build_optimizer(model, TrainingConfig())
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if not cpu
        else contextlib.nullcontext
    )
    forward = torch.compile(model) if a.compile else model
    data = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device=device)

    def train_step():
        chunks = data.split(micro)
        for chunk in chunks:
            with autocast():
                loss = forward(chunk[:, :-1], chunk[:, 1:]) / len(chunks)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cfg = CaptureConfig(batch_size=cap_batch, micro_batch_size=micro, positions=a.positions)
    rows = data[:cap_batch]

    def capture(root, step):
        with checkpoint_transaction(RunPaths(root), step) as ckpt:
            capture_learning_dynamics(
                model,
                cfg,
                step,
                {"train": rows, "eval": rows},
                Dist(device=device),
                None,
                ckpt,
                autocast,
            )

    train_step()  # warm-up (and compile)
    with tempfile.TemporaryDirectory() as root:
        capture(root, 0)
        sync(device)
        times = {"train step": [], "capture (train + eval)": []}
        for i in range(a.repeats):
            t = time.perf_counter()
            train_step()
            sync(device)
            times["train step"].append(time.perf_counter() - t)
            t = time.perf_counter()
            capture(root, i + 1)
            sync(device)
            times["capture (train + eval)"].append(time.perf_counter() - t)
    name = torch.cuda.get_device_name() if not cpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{a.preset} preset on {name}: seq_len {seq}, train batch {batch}, capture batch "
        f"{cap_batch} per split, micro-batch {micro}, positions {a.positions}"
    )
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"  {k:<24} {v * 1000:9.1f} ms (best of {a.repeats})")
    ratio = best["capture (train + eval)"] / best["train step"]
    print(f"  capture / train step     {ratio:9.2f}x  (target < 3)")


if __name__ == "__main__":
    main()
