"""The run directory under hostile conditions: a second trainer, damaged checkpoints, a full disk,
refused resumes, odd pointers, non-finite weights, file modes and missing integrations."""

import json
import os
import shutil
import stat

import pytest
from safetensors import SafetensorError

from pico_format import RunFormatError, RunPaths, latest_step, list_checkpoints
from pico_train.config import ConfigError
from pico_train.lock import RunLock, RunLockedError
from pico_train.monitor import read_log
from pico_train.train import TrainingError, train

from tiny_runs import tiny_config

# One worker builds the module's workspace once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("run_safety")

SHORT = ["training.max_steps=4", "checkpointing.every=2", "checkpointing.steps=[]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run (checkpoints 2 and 4, both with state), copied by each test."""
    root = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(root, *SHORT, "capture.enabled=false"))
    return root


def _copy(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _snapshot(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_second_trainer_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):  # stands for a trainer that is running
        with pytest.raises(TrainingError, match=r"in use by another trainer \(pid \d+"):
            train(tiny_config(run_dir, *SHORT))
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
    assert not run_dir.exists()  # the lock removed the folder it made for nothing


def test_a_held_lock_refuses_and_a_stale_lock_file_is_taken(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("pid 99999 on a-crashed-host\n")  # a crash left the file
    lock = RunLock(run_dir).acquire()
    with pytest.raises(RunLockedError):
        RunLock(run_dir).acquire()
    lock.release()
    RunLock(run_dir).acquire().release()


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(
    finished, tmp_path, damage, capsys
):
    run_dir = _copy(finished, tmp_path)
    run = RunPaths(run_dir)
    weights = run.checkpoint(4).model_weights
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete":
        weights.unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    result = train(tiny_config(run_dir, *SHORT, "capture.enabled=false"))
    out = capsys.readouterr().out
    assert f"checkpoint '{run.checkpoint(4).root}': model.safetensors is" in out
    assert "resuming from step 2 of" in out
    assert result.start_step == 2 and latest_step(run) == 4
    ref = {r["step"]: r["loss"] for r in read_log(RunPaths(finished).log) if "loss" in r}
    got = {r["step"]: r["loss"] for r in read_log(run.log) if "loss" in r}
    assert got == ref  # steps 3-4 retrained bit for bit


def test_no_verifying_checkpoint_is_one_clear_error(finished, tmp_path):
    run = RunPaths(_copy(finished, tmp_path))
    for step in (2, 4):
        run.checkpoint(step).optimizer.write_bytes(b"")
    before = _snapshot(run.root)
    with pytest.raises(TrainingError, match="no checkpoint .* can be resumed: .*optimizer"):
        train(tiny_config(run.root, *SHORT, "training.max_steps=6", "capture.enabled=false"))
    assert _snapshot(run.root) == before


def test_full_disk_inside_safetensors_is_the_disk_full_message(tmp_path, monkeypatch):
    import pico_train.checkpoint as ckpt_mod

    real, calls = ckpt_mod.save_file, {"n": 0}

    def full(*a, **k):  # the error safetensors raised on a full tmpfs
        calls["n"] += 1
        if calls["n"] == 4:  # step 2: model, optimizer, rng; step 4: model
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(*a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    config = tiny_config(tmp_path / "run", *SHORT, "capture.enabled=false")
    with pytest.raises(RunFormatError, match="Disk full while writing checkpoint step 4"):
        train(config)
    run = RunPaths(config.run_dir)
    assert latest_step(run) == 2 and list_checkpoints(run) == [2]
    assert not list(run.root.rglob(".tmp-*"))


def test_refused_resume_writes_nothing(finished, tmp_path):
    run = RunPaths(_copy(finished, tmp_path))
    before = _snapshot(run.root)
    with pytest.raises(TrainingError, match="different model or data"):
        train(tiny_config(run.root, *SHORT, "data.seed=5", "capture.enabled=false"))
    assert _snapshot(run.root) == before


def test_latest_pointer_that_is_not_an_object(finished, tmp_path):
    run = RunPaths(_copy(finished, tmp_path))
    run.latest.write_text("[4]\n")
    with pytest.raises(RunFormatError, match="not a checkpoint pointer"):
        latest_step(run)
    with pytest.raises(TrainingError, match="not a checkpoint pointer"):
        train(tiny_config(run.root, *SHORT, "capture.enabled=false"))


def test_nonfinite_weights_are_never_saved(tmp_path, monkeypatch):
    import torch

    real, calls = torch.optim.AdamW.step, {"n": 0}

    def poisoning_step(self, *a, **k):  # the second update leaves a NaN weight
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    config = tiny_config(tmp_path / "run", *SHORT, "checkpointing.steps=[0]")
    with pytest.raises(TrainingError, match=r"weights are not finite at step 2.*\(step 0\)"):
        train(config)
    assert list_checkpoints(RunPaths(config.run_dir)) == [0]


def test_checkpoint_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        result = train(
            tiny_config(
                tmp_path / "run",
                "training.max_steps=1",
                "training.warmup_steps=0",
                "checkpointing.every=1",
            )
        )
    finally:
        os.umask(old)
    files = [p for p in RunPaths(result.run_dir).checkpoint(1).root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    manifest = json.loads(RunPaths(result.run_dir).checkpoint(1).manifest.read_text())
    assert set(manifest["sizes"]) == set(manifest["crc32"]) == set(manifest["files"])


@pytest.mark.parametrize(
    "extra,message",
    [
        ("capture.modules=[model.layers.*.attn.nothing]", "match no module"),
        ("logging.wandb=true", "logging.wandb=true needs the wandb package"),
    ],
)
def test_problems_found_before_anything_is_created(tmp_path, extra, message):
    if extra.startswith("logging.wandb"):
        pytest.importorskip("tensorboard")  # any environment: wandb is not installed here
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed")
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(tmp_path / "run", *SHORT, extra))
    assert not (tmp_path / "run").exists()
