"""pico-train sweep: several presets, one data order and checkpoint schedule, sibling runs."""

import pytest
from click.testing import CliRunner

from pico_format import CaptureReader, RunPaths, list_checkpoints, read_run_info
from pico_train.cli import main
from pico_train.config import PRESETS, ConfigError
from pico_train.sweep import compare_command, parse_presets, plan_sweep

from tiny_runs import TINY

# TINY's data and schedule, without its model section: each preset brings its own shape.
DATA = [o for o in TINY if not o.startswith(("model.", "preset="))] + [
    "training.max_steps=4",
    "checkpointing.every=2",
    "checkpointing.steps=[0,1]",
]


def test_sweep_presets_are_the_demo_shape_at_other_sizes():
    demo = PRESETS["demo"]
    for name in ("demo-w32", "demo-w64", "demo-w64-l8"):
        m = PRESETS[name]
        assert (m.n_heads, m.n_kv_heads, m.vocab_size, m.max_seq_len) == (
            demo.n_heads,
            demo.n_kv_heads,
            demo.vocab_size,
            demo.max_seq_len,
        )
        assert m.mlp_hidden == 4 * m.d_model
    assert PRESETS["demo-w64-l8"].n_layers == 2 * PRESETS["demo-w64"].n_layers


def test_bad_preset_lists_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'demo-w33'. Did you mean"):
        parse_presets("demo-w32,demo-w33")
    with pytest.raises(ConfigError, match="at least two"):
        parse_presets("demo")
    with pytest.raises(ConfigError, match="given twice"):
        parse_presets("demo,demo-w32,demo")
    result = CliRunner().invoke(main, ["sweep", "--presets", "demo,nope"])
    assert result.exit_code == 2 and "unknown preset 'nope'" in result.output
    assert not (tmp_path / "runs").exists()


def test_plan_puts_runs_side_by_side_with_one_schedule(tmp_path):
    plan = plan_sweep(None, "demo-w32,demo", [*DATA, f"run_dir={tmp_path / 'sw'}"])
    assert plan.run_dirs == [tmp_path / "sw" / "demo-w32", tmp_path / "sw" / "demo"]
    assert [c.model.d_model for c in plan.configs.values()] == [32, 128]
    assert compare_command(plan).startswith(f"pico-analyze compare {tmp_path / 'sw' / 'demo-w32'}")
    default = plan_sweep(None, ["demo-w32", "demo-w64"], DATA)  # run_dir left at its default
    assert default.run_dirs[0].as_posix() == "runs/sweep/demo-w32"


def test_a_note_shared_by_the_runs_is_printed_once(tmp_path, capsys):
    late = [*DATA, "checkpointing.steps=[0,1,99]", f"run_dir={tmp_path / 'sw'}"]
    plan_sweep(None, "demo-w32,demo-w64,demo", late)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert sum("checkpointing.steps [99]" in n for n in notes) == 1
    assert len(notes) == len(set(notes))


@pytest.mark.slow
def test_sweep_trains_every_preset_on_the_same_batches(tmp_path):
    root = tmp_path / "sw"
    args = ["sweep", "--presets", "demo-w32,demo-w64-l8"]
    for o in [*DATA, f"run_dir={root}"]:
        args += ["--set", o]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[2/2] demo-w64-l8" in result.output and "pico-analyze compare" in result.output
    a, b = RunPaths(root / "demo-w32"), RunPaths(root / "demo-w64-l8")
    assert list_checkpoints(a) == list_checkpoints(b) == [0, 1, 2, 4]
    assert read_run_info(a).data_fingerprint == read_run_info(b).data_fingerprint
    assert read_run_info(a).model_fingerprint != read_run_info(b).model_fingerprint
    for step in (1, 2, 4):
        for split in ("train", "eval"):
            ids_a = CaptureReader(a.checkpoint(step), split).manifest.token_ids
            assert ids_a == CaptureReader(b.checkpoint(step), split).manifest.token_ids
    # Run again: both runs are complete, nothing is retrained.
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and "[1/2] demo-w32" in again.output
