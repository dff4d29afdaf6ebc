"""Bad input to pico-analyze: one line naming the problem, no traceback, the right exit status.

Refused pickles, unknown devices, requested steps that do not exist, and analyses in which
nothing could be measured (issue 12, items 16-19; the Hub and mistyped paths: test_load.py and
test_sources_hub.py).
"""

from __future__ import annotations

import csv
import shutil

import torch
from click.testing import CliRunner

from pico_analyze.cli import main

WEIGHTS_ONLY = (
    "metrics:\n  - metric: gini\n    components:\n"
    "      - {type: simple, kind: weights, module: self_attn.o_proj}\n"
)


class Payload:
    """An object whose unpickling would run code (print here; anything in an attack)."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert (
        "Traceback" not in result.output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    lines = [line for line in result.output.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_pickle_holding_code_is_refused_in_one_line(original_run, tmp_path, capfd):
    run = tmp_path / "evil"
    shutil.copytree(original_run, run)
    target = run / "checkpoints" / "step_10" / "learning_dynamics" / "val_weights.pt"
    torch.save({"payload": Payload()}, target)
    result = invoke("run", str(run), "--config", _config(tmp_path), "--no-progress")
    line = one_line_error(result, 2)
    assert "holds pickled code" in line and "was not loaded" in line and str(target) in line
    assert "weights_only=False" not in result.output
    assert "this ran while loading" not in result.output + capfd.readouterr().out


def test_an_unknown_device_is_refused(pico_run, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", str(pico_run), "--device", "banana", "--out", str(out))
    line = one_line_error(result, 2)
    assert "'banana' is not a device" in line
    assert not out.exists()  # refused before anything was written
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("device: cuda:x\n")
    assert "'cuda:x' is not a device" in one_line_error(
        invoke("run", str(pico_run), "--config", str(cfg)), 2
    )


def test_missing_requested_steps_are_named(pico_run, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"steps: [0, 15, 20, 99]\n{WEIGHTS_ONLY}")
    line = one_line_error(invoke("run", str(pico_run), "--config", str(cfg)), 2)
    assert "steps [15, 99] are not checkpoints of run 'tiny'" in line
    assert "available: [0, 10, 20]" in line


def test_nothing_measured_exits_non_zero(pico_run, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(  # q_proj gradients are not captured: every value is a note
        "metrics:\n  - metric: frobenius_norm\n    components:\n"
        "      - {type: simple, kind: gradients, module: self_attn.q_proj}\n"
    )
    run = tmp_path / "run"
    shutil.copytree(pico_run, run)
    with open(run / "log.jsonl", "w") as f:  # loss rows are read from the run, not measured
        f.writelines(f'{{"step": {s}, "loss": {5.0 - s / 10}}}\n' for s in (0, 10, 20))
    out = tmp_path / "out"
    result = invoke("run", str(run), "--config", str(cfg), "--out", str(out), "--no-progress")
    line = one_line_error(result, 1)
    assert "nothing could be measured" in line
    assert (out / "results.csv").is_file()  # the notes are kept
    assert any(r["function"] == "train_loss" for r in csv.DictReader(open(out / "results.csv")))
    cfg.write_text(WEIGHTS_ONLY)
    assert invoke("run", str(run), "--config", str(cfg), "--out", str(out)).exit_code == 0


def _config(tmp_path) -> str:
    cfg = tmp_path / "weights.yaml"
    cfg.write_text(WEIGHTS_ONLY)
    return str(cfg)
