"""The offline demo: train the `demo` preset on the embedded Shakespeare corpus, then analyse it.

    make demo                       # or: python examples/demo.py [--set key=value ...]

Needs no network. Writes runs/demo (checkpoints with learning-dynamics captures) and
runs/demo/analysis (a results table and plots). Running it again resumes, or does nothing if
the run is complete; delete runs/demo to start over.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    from pico_format import RunPaths, list_checkpoints
    from pico_train.config import load_config
    from pico_train.train import train

    torch.set_num_threads(os.cpu_count() or 1)  # the demo may use every core
    overrides = [a for a in argv if a != "--set"]
    config = load_config(ROOT / "pico-train" / "configs" / "demo.yaml", overrides)
    began = time.perf_counter()
    result = train(config)
    took = time.perf_counter() - began
    print()
    if result.first_loss is not None:
        print(f"trained {result.steps - result.start_step} steps in {took:.0f} s")
        print(f"first training loss  {result.first_loss:.3f}")
        print(f"last training loss   {result.last_loss:.3f}")
        print(f"held-out perplexity  {result.eval['eval_perplexity']:.2f}")
    else:
        print(f"already trained: {result.run_dir} reached step {result.steps}")
    steps = list_checkpoints(RunPaths(result.run_dir))
    print(f"run directory        {result.run_dir}  (checkpoints at steps {steps})")

    from pico_analyze import analyze_run

    analysis = analyze_run(result.run_dir)
    print()
    print(analysis.summary())

    from pico_train.cli import main as cli

    print("\nsample (pico-train generate runs/demo --prompt 'ROMEO:'):")
    cli(
        ["generate", result.run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "60"],
        standalone_mode=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
