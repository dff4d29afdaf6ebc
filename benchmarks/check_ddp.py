"""One process versus torchrun with N processes: the per-step losses of the same config.

    python benchmarks/check_ddp.py --nproc 2 [--set key=value ...]

Trains the same config twice into temporary run directories (once plainly, once under
`torchrun --nproc_per_node N`; NCCL on GPUs, gloo on CPU) and prints both loss curves, their
largest difference, and the wall time of each. The global batch and data order do not depend on N,
so the curves agree up to floating-point reduction order (bf16 autocast on GPUs widens that).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from pico_format import RunPaths
from pico_train.distributed import launch_command
from pico_train.monitor import read_log

ROOT = Path(__file__).resolve().parents[1]


def run(run_dir: Path, nproc: int, config: str, overrides: list[str]) -> float:
    args = [
        "train",
        "--config",
        config,
        "--set",
        f"run_dir={run_dir}",
        "--set",
        "logging.progress=false",
    ]
    for o in overrides:
        args += ["--set", o]
    cmd = launch_command(nproc, args)
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ})
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=str(ROOT / "pico-train" / "configs" / "demo.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = {n: run(Path(tmp) / f"n{n}", n, a.config, a.overrides) for n in (1, a.nproc)}
        curves = {
            n: [r["loss"] for r in read_log(RunPaths(Path(tmp) / f"n{n}").log) if "loss" in r]
            for n in (1, a.nproc)
        }
    one, many = curves[1], curves[a.nproc]
    for step, (x, y) in enumerate(zip(one, many), start=1):
        print(
            f"step {step:4d}  1 process {x:.6f}   {a.nproc} processes {y:.6f}   diff {y - x:+.2e}"
        )
    print(
        f"max |diff| {max(abs(x - y) for x, y in zip(one, many)):.3e} over {len(one)} steps; "
        f"wall time 1 process {times[1]:.1f} s, {a.nproc} processes {times[a.nproc]:.1f} s"
    )


if __name__ == "__main__":
    main()
