"""A walk through bad inputs to both command lines (issue 12): for each one, exit status 2, one
line `error: ...` naming the problem, no traceback, and nothing on disk changed.

The workspace holds a finished tiny run, damaged copies of it, a foreign folder, broken configs
and data files, and an original-layout run whose .pt file holds pickled code. Every case runs
in process (click's test runner) with the workspace as the working directory, and the whole
workspace (paths, folders and bytes) is compared before and after.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pico_analyze.cli import main as analyze_cli
from pico_format import RunPaths
from pico_train.cli import main as train_cli
from pico_train.lock import RunLock
from pico_train.train import train

from tiny_runs import TINY, tiny_config

# One worker builds the module's workspace once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("walk")

SHORT = ["training.max_steps=2", "checkpointing.every=2", "checkpointing.steps=[]"]


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _train(run_dir: str, *overrides: str, flags=()) -> list[str]:
    return ["train", *flags, *_sets(*TINY, *SHORT, f"run_dir={run_dir}", *overrides)]


class Payload:
    """Unpickling it would run code."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def _original_run_with_code(root: Path) -> Path:
    path = Path(__file__).resolve().parents[2] / "pico-analyze" / "tests" / "synthetic_runs.py"
    spec = importlib.util.spec_from_file_location("walk_synthetic_runs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    run = module.make_original_run(root)
    target = run / "checkpoints" / "step_10" / "learning_dynamics" / "val_weights.pt"
    torch.save({"payload": Payload()}, target)
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("walk")
    train(tiny_config(ws / "run", *SHORT))
    for name in ("run_list", "run_badstate", "run_badcfg", "run_locked"):
        shutil.copytree(ws / "run", ws / name)
    RunPaths(ws / "run_list").latest.write_text("[2]\n")
    RunPaths(ws / "run_badstate").checkpoint(2).optimizer.write_bytes(b"")
    RunPaths(ws / "run_badcfg").config.write_text("model: {d_model: 32\n")
    (ws / "runs").mkdir()  # where runs live: `runs/dmeo` is a mistyped local path
    (ws / "notes").mkdir()
    (ws / "notes" / "mine.txt").write_text("my notes")
    (ws / "afile").write_text("not a folder")
    (ws / "bad.yaml").write_text("preset: demo\ntraining:\n  max_steps: [1\n  lr: 3\n")
    (ws / "latin.yaml").write_bytes(b"preset: demo\n# caf\xe9\n")
    (ws / "list.yaml").write_text("- preset\n- demo\n")
    (ws / "analysis_typo.yaml").write_text("metrics:\n  - metric: cka\n    taget: last\n")
    (ws / "empty.jsonl").write_text("")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), ws / "zero.parquet")
    pq.write_table(pa.table({"text": ["To be."]}), ws / "tiny.parquet")
    _original_run_with_code(ws / "evil")
    return ws


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


CASES = [
    # --- pico-train: config values and syntax
    (train_cli, _train("new", "training.max_steps=abc"), "training.max_steps: expected int"),
    (train_cli, _train("new", "data.seq_len=0"), "data.seq_len: must be positive"),
    (train_cli, _train("new", "training.lr=.inf"), "training.lr: must be a finite number"),
    (train_cli, _train("new", "training.lr=.nan"), "training.lr: must be a finite number"),
    (train_cli, _train("new", "training.max_steps=[1"), "training.max_steps=[1, line 1: invalid"),
    (train_cli, _train("new", "training.max_steps"), "must look like section.key=value"),
    (train_cli, _train("new", "trainng.max_steps=3"), "Did you mean 'training'"),
    (train_cli, _train("new", "training.max_step=3"), "Did you mean 'training.max_steps'"),
    (train_cli, _train("new", "model.d_model=30"), "is not divisible by n_heads"),
    (train_cli, _train("new", "training.warmup_steps=50"), "longer than the run"),
    (train_cli, _train("new", "checkpointing.steps=[-1]"), "checkpointing.steps: every step"),
    (train_cli, _train("new", "capture.positions=first"), "capture.positions"),
    (train_cli, _train("new", "capture.modules=[no.such.module]"), "match no module"),
    (train_cli, ["train", "--config", "bad.yaml"], "bad.yaml, line 4: invalid YAML"),
    (train_cli, ["train", "--config", "latin.yaml"], "latin.yaml, line 2: not UTF-8"),
    (train_cli, ["train", "--config", "list.yaml"], "must hold a mapping"),
    (train_cli, ["train", "--config", "nope.yaml"], "'nope.yaml' does not exist"),
    (train_cli, ["train", "--preset", "smal"], "'smal' is not one of"),
    (train_cli, _train("new", flags=["--device", "banana"]), "'banana' is not one of"),
    (train_cli, _train("new", flags=["--device", "cuda"]), "CUDA is not available"),
    # --- pico-train: data
    (train_cli, _train("new", "data.dataset=empty.jsonl"), "'empty.jsonl' is empty (0 bytes)"),
    (train_cli, _train("new", "data.dataset=zero.parquet"), "'zero.parquet' holds no rows"),
    (train_cli, _train("new", "data.dataset=tiny.parquet"), "too few for even two sequences"),
    (train_cli, _train("new", "data.dataset=./missing.parquet"), "does not exist"),
    (train_cli, _train("new", "data.tokenizer=./missing.json"), "does not exist"),
    # --- pico-train: run directories
    (train_cli, _train("notes"), "is not empty and is not a pico run"),
    (train_cli, _train("afile"), "is a file, not a folder"),
    (train_cli, _train("run", "model.d_model=64"), "model.d_model: 32 -> 64"),
    (train_cli, _train("run", "data.seed=3"), "different model or data"),
    (train_cli, _train("run_locked"), "in use by another trainer"),
    (train_cli, _train("run_list"), "not a checkpoint pointer"),
    (train_cli, _train("run_badstate"), "optimizer.safetensors is truncated"),
    (train_cli, _train("run_badcfg"), "config.yaml, line 2: invalid YAML"),
    # --- pico-train: info, config, generate, usage
    (train_cli, ["info", "runs/dmeo"], "no such run directory: 'runs/dmeo'"),
    (train_cli, ["info", "--set", "training.max_steps", "5"], "section.key=value"),
    (train_cli, ["info", "notes"], "'notes' is not a pico run directory"),
    (train_cli, ["info", "run", "--preset", "tiny"], "either a run directory"),
    (train_cli, ["info", "run_list"], "not a checkpoint pointer"),
    (train_cli, ["config", "--set", "model.n_kv_heads=5"], "not divisible by n_kv_heads"),
    (train_cli, ["generate", "nope"], "'nope' does not exist"),
    (train_cli, ["generate", "notes"], "neither a checkpoint folder nor a run"),
    (train_cli, ["generate", "run", "--max-new-tokens", "abc"], "'abc' is not a valid integer"),
    (train_cli, ["trian"], "No such command 'trian'"),
    (train_cli, ["train", "--bogus"], "No such option '--bogus'"),
    # --- pico-analyze
    (analyze_cli, ["run", "runs/dmeo"], "no such run directory"),
    (analyze_cli, ["run", "run", "--device", "banana"], "'banana' is not a device"),
    (analyze_cli, ["run", "run", "--config", "bad.yaml"], "bad.yaml, line 4: invalid YAML"),
    (analyze_cli, ["run", "run", "--config", "latin.yaml"], "latin.yaml, line 2: not UTF-8"),
    (analyze_cli, ["run", "run", "--config", "analysis_typo.yaml"], "unknown key 'taget'"),
    (analyze_cli, ["run", "run", "--config", "nope.yaml"], "'nope.yaml' does not exist"),
    (analyze_cli, ["run", "run", "--workers", "abc"], "'abc' is not a valid integer"),
    (analyze_cli, ["run", "evil", "--no-progress"], "holds pickled code"),
    (analyze_cli, ["compare", "run"], "at least two runs"),
    (analyze_cli, ["analyse"], "No such command 'analyse'"),
]


@pytest.mark.parametrize(
    "cli,args,message",
    CASES,
    ids=[f"{i:02d}-{' '.join(a)[:40]}" for i, (_, a, _) in enumerate(CASES)],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    workspace, monkeypatch, capfd, cli, args, message
):
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = _snapshot(workspace)
    lock = RunLock(workspace / "run_locked").acquire() if "run_dir=run_locked" in args else None
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        if lock is not None:
            lock.release()
    output = result.output
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output + capfd.readouterr().err
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert message in lines[0], output
    assert _snapshot(workspace) == before


def test_the_walk_covers_at_least_forty_inputs_on_both_commands():
    assert len(CASES) >= 40
    assert {cli for cli, _, _ in CASES} == {train_cli, analyze_cli}
