"""The README's demo (examples/demo.py) end to end, shortened: train, analyse, sample."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.mark.slow
def test_demo_example_runs_end_to_end(tmp_path):
    overrides = [
        f"run_dir={tmp_path / 'demo'}",
        "training.max_steps=6",
        "training.warmup_steps=2",
        "checkpointing.every=3",
        "checkpointing.steps=[0]",
        "logging.progress=false",
    ]
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def demo() -> str:
        proc = subprocess.run(
            [sys.executable, str(DEMO), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = demo()
    for line in (
        "first training loss",
        "last training loss",
        "held-out perplexity",
        "Analysed run 'demo': 3 checkpoints",
        "Plots (",
        "sample (pico-train generate",
    ):
        assert line in out, line
    assert (tmp_path / "demo" / "analysis" / "results.csv").is_file()
    assert list((tmp_path / "demo" / "analysis" / "plots").glob("*.png"))
    assert "trained 6 steps" in out and "(checkpoints at steps [0, 3, 6])" in out
    again = demo()  # a second `make demo`: nothing to train, the same checkpoints
    assert "already trained" in again
    assert "(checkpoints at steps [0, 3, 6])" in again
