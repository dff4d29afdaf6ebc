"""The training loop end to end on CPU: resume exactness, capture neutrality, failure handling."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pico_format import RunFormatError, RunPaths, capture_splits, latest_step, list_checkpoints
from pico_train.config import load_config
from pico_train.monitor import read_log
from pico_train.train import TrainingError, train

from tiny_runs import TINY, tiny_config


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(RunPaths(run_dir).log) if "loss" in r}


def final_weights(run_dir):
    run = RunPaths(run_dir)
    return load_file(str(run.checkpoint(latest_step(run)).model_weights))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, in a subprocess like the interrupted ones."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _cli(run_dir)
    return run_dir


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# A wrapper that runs the real CLI but SIGKILLs its own process at one precise moment.
KILLER = textwrap.dedent("""
    import os, signal, sys
    point, arg = sys.argv[1], int(sys.argv[2])
    sys.argv = ["pico-train", *sys.argv[3:]]
    import pico_train.checkpoint as checkpoint_mod
    import pico_train.train as train_mod
    import pico_format.run as run_mod
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    calls = {"n": 0}
    if point == "mid_checkpoint":  # after the model files, before the state and the rename
        real = checkpoint_mod.save_training_state
        def patched(*a, **k):
            calls["n"] += 1
            if calls["n"] == arg:
                die()
            return real(*a, **k)
        checkpoint_mod.save_training_state = patched
    elif point == "after_step":  # between checkpoints, right after logging step `arg`
        real = train_mod.Monitor.log
        def patched(self, record):
            real(self, record)
            if record.get("step") == arg and "loss" in record:
                die()
        train_mod.Monitor.log = patched
    elif point == "before_pointer":  # checkpoint renamed into place, latest.json not updated
        real = run_mod.write_json_atomic
        def patched(path, obj):
            if str(path).endswith("latest.json"):
                calls["n"] += 1
                if calls["n"] == arg:
                    die()
            return real(path, obj)
        run_mod.write_json_atomic = patched
    elif point == "after_lock":  # run creation: the directory is locked, nothing written yet
        import pico_train.lock as lock_mod
        real = lock_mod.RunLock.acquire
        def patched(self):
            real(self)
            die()
        lock_mod.RunLock.acquire = patched
    elif point in ("before_rename", "after_rename"):  # atomic writes, by target file name
        name = sys.argv.pop(1)
        real = os.replace
        def patched(src, dst):
            hit = os.path.basename(str(dst)) == name
            if hit and point == "before_rename":
                die()
            real(src, dst)
            if hit:
                calls["n"] += 1
                if calls["n"] == arg:
                    die()
        run_mod.os.replace = patched
    elif point == "prune":  # the state folder renamed to .tmp-state, not yet deleted
        real = run_mod.shutil.rmtree
        def patched(path, *a, **k):
            if os.path.basename(str(path)) == ".tmp-state":
                calls["n"] += 1
                if calls["n"] == arg:
                    die()
            return real(path, *a, **k)
        run_mod.shutil.rmtree = patched
    from pico_train.cli import main
    main()
""")


def _cli(run_dir, *extra, kill=None, check=True, flags=()):
    overrides = [*TINY, f"run_dir={run_dir}", *extra]
    args = ["train", *flags, *[a for o in overrides for a in ("--set", o)]]
    if kill is None:
        cmd = [sys.executable, "-m", "pico_train.cli", *args]
    else:
        script = Path(run_dir).parent / "killer.py"
        script.write_text(KILLER)
        cmd = [sys.executable, str(script), *map(str, kill[:2]), *kill[2:], *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    if check and kill is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _leftovers(run_dir):
    return sorted(str(p) for p in Path(run_dir).rglob(".tmp-*"))


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bit_exact(reference, tmp_path):
    run_dir = tmp_path / "run"
    points = [
        # every window of run creation: locked only, config.yaml half-written, config.yaml
        # without run.json, run.json half-written, run.json written
        ("after_lock", 1),
        ("before_rename", 1, "config.yaml"),
        ("after_rename", 1, "config.yaml"),
        ("before_rename", 1, "run.json"),
        ("after_rename", 1, "run.json"),
        ("mid_checkpoint", 1),  # inside the very first checkpoint: the rerun starts afresh
        ("after_step", 2),
        ("mid_checkpoint", 2),
        ("before_pointer", 2),
        ("prune", 1),  # inside pruning: step_0/.tmp-state left behind
        ("before_rename", 1, "latest.json"),  # RUN/.tmp-latest.json.<pid> left behind
        ("after_step", 10),
    ]
    for point in points:
        proc = _cli(run_dir, kill=point)
        assert proc.returncode == -9, (point, proc.stderr[-2000:])
        if point[0] == "prune":
            assert any(p.endswith("/.tmp-state") for p in _leftovers(run_dir))
        if point[-1] == "latest.json":
            assert any(".tmp-latest.json." in p for p in _leftovers(run_dir))
    _cli(run_dir)
    assert _leftovers(run_dir) == []  # what the kills left was cleaned up
    expected = losses(reference)
    assert len(expected) == 12
    assert losses(run_dir) == expected  # float equality: bit for bit
    steps = lambda d: [(r["step"], sorted(r)) for r in read_log(RunPaths(d).log)]
    assert steps(run_dir) == steps(reference)  # no record lost or repeated by the restarts
    ref_w, got_w = final_weights(reference), final_weights(run_dir)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert list_checkpoints(RunPaths(run_dir)) == list_checkpoints(RunPaths(reference))


@pytest.mark.slow
def test_rerun_of_finished_run_does_nothing(reference):
    proc = _cli(reference)
    assert "already reached step 12" in proc.stdout


@pytest.mark.slow
def test_resume_with_different_model_is_refused(reference):
    proc = _cli(reference, "model.d_model=64", check=False)
    assert proc.returncode != 0
    assert "model.d_model: 32 -> 64" in proc.stderr


@pytest.mark.slow
def test_forced_resume_cannot_change_the_model_shape(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    proc = _cli(copy, "model.d_model=64", check=False, flags=["--force"])
    assert proc.returncode != 0 and "never with a changed model" in proc.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_run_layout_and_contents(reference):
    run = RunPaths(reference)
    assert list_checkpoints(run) == [0, 1, 3, 6, 9, 12]
    with_state = [s for s in list_checkpoints(run) if run.checkpoint(s).trainer.is_file()]
    assert with_state == [9, 12]  # keep_states=2
    ckpt = run.checkpoint(12)
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (ckpt.root / name).is_file(), name
    state = json.loads(ckpt.trainer.read_text())
    assert state["counters"]["step"] == 12 and state["data_cursor"]["next_batch"] == 12
    assert {"optimizer", "rng", "scheduler", "data_fingerprint"} <= set(state)
    ev = json.loads(ckpt.eval.read_text())
    assert ev["eval_tokens"] == 4 * 32 and ev["eval_perplexity"] > 1
    log = read_log(run.log)
    step_records = [r for r in log if "loss" in r]
    assert {"lr", "grad_norm", "tokens_per_s", "tokens_seen"} <= set(step_records[0])
    assert step_records[-1]["tokens_seen"] == 12 * 4 * 32
    assert any("eval_loss" in r for r in log)
    assert run.config.is_file() and run.info.is_file()
    for step in list_checkpoints(run):  # both splits at every checkpoint, the last included
        assert capture_splits(run.checkpoint(step)) == ["eval", "train"]
    # Captured weights are read from model.safetensors, not stored a second time.
    from pico_format import CaptureReader

    model = load_file(str(ckpt.model_weights))
    for split in ("train", "eval"):
        assert not ckpt.capture_file(split, "weights").exists()
        reader = CaptureReader(ckpt, split)
        assert reader.manifest.weights_in_model and len(reader.modules("weights")) == 6
        for module in reader.modules("weights"):
            assert torch.equal(reader.get("weights", module), model[f"{module}.weight"])


def test_capture_does_not_change_training(tmp_path):
    on = train(tiny_config(tmp_path / "on", "training.max_steps=4", "checkpointing.every=2"))
    off = train(
        tiny_config(
            tmp_path / "off",
            "training.max_steps=4",
            "checkpointing.every=2",
            "capture.enabled=false",
        )
    )
    assert losses(on.run_dir) == losses(off.run_dir)
    a, b = final_weights(on.run_dir), final_weights(off.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_losses_stop_with_last_checkpoint_intact(tmp_path, monkeypatch):
    from pico_train.model import PicoDecoder

    real = PicoDecoder.forward
    calls = {"n": 0}

    def poisoned(self, input_ids, targets=None, cache=None, **kwargs):
        out = real(self, input_ids, targets, cache, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 6:  # steps 1-3 (two micro-batches each) are fine
                return out * float("nan")
        return out

    monkeypatch.setattr(PicoDecoder, "forward", poisoned)
    config = tiny_config(tmp_path / "run", "training.max_bad_steps=3", "capture.enabled=false")
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        train(config)
    run = RunPaths(config.run_dir)
    assert latest_step(run) == 3
    log = read_log(run.log)
    assert [r["skipped_steps"] for r in log if "loss" in r] == [0, 0, 0, 1, 2, 3]


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import pico_train.checkpoint as checkpoint_mod

    real = checkpoint_mod.save_model_files
    calls = {"n": 0}

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint_mod, "save_model_files", full_disk)
    config = tiny_config(tmp_path / "run", "capture.enabled=false")
    with pytest.raises(RunFormatError, match="Disk full"):
        train(config)
    run = RunPaths(config.run_dir)
    assert latest_step(run) == 1 and list_checkpoints(run) == [0, 1]
    assert not any(p.name.startswith(".tmp-") for p in run.checkpoints.iterdir())


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not a pico run"):
        train(tiny_config(tmp_path / "run"))


def test_local_parquet_dataset_and_tensorboard(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pico_train.corpus import shakespeare_texts

    texts = [t[:20000] for t in shakespeare_texts()[:6]]
    pq.write_table(pa.table({"text": texts}), tmp_path / "plays.parquet")
    config = tiny_config(
        tmp_path / "run",
        f"data.dataset={tmp_path / 'plays.parquet'}",
        "training.max_steps=3",
        "checkpointing.every=3",
        "logging.tensorboard=true",
        "capture.enabled=false",
    )
    result = train(config)
    assert result.last_loss is not None and len(losses(result.run_dir)) == 3
    assert list((Path(result.run_dir) / "tensorboard").glob("events.out.tfevents.*"))


def test_suite_config_trains_with_local_data(tmp_path):
    """configs/tiny.yaml (the real tiny preset: 12 layers, vocab 50304) with the data pointed
    at local files, as the README describes for offline use."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = torch.randint(0, 50304, (24, 33), generator=torch.Generator().manual_seed(0))
    pq.write_table(pa.table({"input_ids": rows.tolist()}), tmp_path / "tokens.parquet")
    tokenizer_dir = tmp_path / "tokenizer"
    from pico_train.tokenizer import load_tokenizer

    load_tokenizer(tiny_config(tmp_path / "unused")).save_pretrained(str(tokenizer_dir))
    root = Path(__file__).resolve().parents[1] / "configs"
    config = load_config(
        root / "tiny.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.dataset={tmp_path / 'tokens.parquet'}",
            f"data.tokenizer={tokenizer_dir}",
            "data.seq_len=32",
            "data.eval_sequences=4",
            "training.global_batch_size=4",
            "training.micro_batch_size=4",
            "training.max_steps=2",
            "training.warmup_steps=1",
            "training.compile=false",
            "checkpointing.steps=[]",
            "capture.batch_size=4",
            "logging.progress=false",
        ],
    )
    assert config.model.n_layers == 12 and config.model.vocab_size == 50304
    result = train(config)
    assert len(losses(result.run_dir)) == 2 and result.checkpoints == [2]
