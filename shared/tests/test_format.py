"""The run-directory contract: names, atomic checkpoints, the latest pointer, captures."""

import errno
import json

import pytest
import torch

from pico_format import (
    CaptureManifest,
    CaptureReader,
    RunFormatError,
    RunInfo,
    RunPaths,
    capture_splits,
    checkpoint_transaction,
    clean_temporary,
    folder_transaction,
    latest_step,
    list_checkpoints,
    module_name,
    prune_states,
    read_run_info,
    write_capture,
    write_run_info,
)
from pico_format.stream import StreamingSafetensorsWriter


def _fill(ckpt, text="x"):
    (ckpt.root / "model.safetensors").write_text(text)
    ckpt.state.mkdir()
    ckpt.trainer.write_text("{}")


def test_checkpoint_transaction_publishes_and_points(tmp_path):
    run = RunPaths(tmp_path)
    for step in (0, 10, 20):
        with checkpoint_transaction(run, step) as ckpt:
            assert ckpt.root.name.startswith(".tmp-")
            _fill(ckpt)
    assert list_checkpoints(run) == [0, 10, 20]
    assert latest_step(run) == 20
    manifest = json.loads(run.checkpoint(20).manifest.read_text())
    assert manifest["complete"] and "model.safetensors" in manifest["files"]


def test_failed_write_leaves_previous_checkpoint_and_pointer(tmp_path):
    run = RunPaths(tmp_path)
    with checkpoint_transaction(run, 1) as ckpt:
        _fill(ckpt, "good")
    with pytest.raises(RunFormatError, match="Disk full"):
        with checkpoint_transaction(run, 2) as ckpt:
            _fill(ckpt)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert latest_step(run) == 1
    assert list_checkpoints(run) == [1]
    assert (run.checkpoint(1).root / "model.safetensors").read_text() == "good"
    assert not any(p.name.startswith(".tmp-") for p in run.checkpoints.iterdir())


def test_interrupted_write_is_invisible_and_cleaned(tmp_path):
    run = RunPaths(tmp_path)
    with checkpoint_transaction(run, 1) as ckpt:
        _fill(ckpt)
    half = run.temporary_checkpoint(2)  # what a SIGKILL mid-write leaves
    half.root.mkdir(parents=True)
    (half.root / "model.safetensors").write_text("partial")
    assert list_checkpoints(run) == [1] and latest_step(run) == 1
    assert clean_temporary(run) == [half.root]


def test_stale_final_folder_is_replaced(tmp_path):
    run = RunPaths(tmp_path)
    for text in ("old", "new"):
        with checkpoint_transaction(run, 5) as ckpt:
            _fill(ckpt, text)
    assert (run.checkpoint(5).root / "model.safetensors").read_text() == "new"


def test_folder_transaction_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with folder_transaction(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary left
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with folder_transaction(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with folder_transaction(tmp_path / "fresh" / "deeper") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "fresh" / "deeper" / "a").read_text() == "a"


def test_pointer_to_missing_checkpoint_is_an_error(tmp_path):
    run = RunPaths(tmp_path)
    run.latest.write_text(json.dumps({"step": 7}))
    with pytest.raises(RunFormatError, match="not a complete checkpoint"):
        latest_step(run)
    run.latest.write_text("{not json")
    with pytest.raises(RunFormatError, match="Corrupt JSON"):
        latest_step(run)


def test_prune_states_keeps_last_k_and_all_model_files(tmp_path):
    run = RunPaths(tmp_path)
    for step in range(5):
        with checkpoint_transaction(run, step) as ckpt:
            _fill(ckpt)
    prune_states(run, keep=2)
    assert [s for s in range(5) if run.checkpoint(s).state.is_dir()] == [3, 4]
    assert all((run.checkpoint(s).root / "model.safetensors").is_file() for s in range(5))


def test_run_info_round_trip_and_newer_schema(tmp_path):
    run = RunPaths(tmp_path)
    info = RunInfo(
        schema_version=1, code_version="0.1.0", data_fingerprint="d", model_fingerprint="m"
    )
    write_run_info(run, info)
    assert read_run_info(run) == info
    run.info.write_text(json.dumps({**json.loads(run.info.read_text()), "schema_version": 99}))
    with pytest.raises(RunFormatError, match="newer"):
        read_run_info(run)


def test_capture_write_read_round_trip(tmp_path):
    run = RunPaths(tmp_path)
    v_proj = [module_name(layer, "self_attn.v_proj") for layer in range(2)]
    acts = {v_proj[0]: torch.randn(4, 8), v_proj[1]: torch.randn(4, 8).bfloat16()}
    weights = {v_proj[0]: torch.randn(8, 16)}
    with checkpoint_transaction(run, 3) as ckpt:
        manifest = CaptureManifest(
            step=3,
            split="eval",
            modules=list(acts),
            layers={m: i for i, m in enumerate(acts)},
            positions="last",
            position_indices=[5],
            seq_len=6,
            token_ids=[[1, 2, 3, 4, 5, 6]] * 4,
        )
        write_capture(ckpt, manifest, {"activations": acts, "weights": weights}, ["a"] * 4)
    ckpt = run.checkpoint(3)
    assert capture_splits(ckpt) == ["eval"]
    reader = CaptureReader(ckpt, "eval")
    assert reader.modules("activations") == list(acts)
    assert reader.modules("weights") == [v_proj[0]]
    for m, t in acts.items():
        assert torch.equal(reader.get("activations", m), t)
    assert reader.manifest.tensors["activations"][list(acts)[1]].dtype == "bfloat16"
    assert reader.manifest.batch_size == 4 and reader.texts() == ["a"] * 4
    with pytest.raises(KeyError, match="not captured"):
        reader.get("weights", v_proj[1])
    with pytest.raises(RunFormatError, match="no 'train' capture"):
        CaptureReader(ckpt, "train")
    # A plain path (str or Path) to the checkpoint folder reads the same capture.
    for path in (str(ckpt.root), ckpt.root):
        by_path = CaptureReader(path, "eval")
        assert by_path.ckpt == ckpt and by_path.modules("weights") == reader.modules("weights")
        assert torch.equal(by_path.get("activations", list(acts)[0]), acts[list(acts)[0]])


def test_streaming_writer_matches_safetensors(tmp_path):
    from safetensors import safe_open

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "c": torch.arange(4)}
    writer = StreamingSafetensorsWriter(
        tmp_path / "s.safetensors", {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    )
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v)
    bad = StreamingSafetensorsWriter(tmp_path / "t.safetensors", {"a": ((2,), torch.float32)})
    with pytest.raises(ValueError, match="declared"):
        bad.write("a", torch.zeros(3))


def test_load_capture_by_step_split_kind_module(tmp_path):
    from pico_format import load_capture, open_capture

    run = RunPaths(tmp_path)
    t = torch.randn(2, 3)
    with checkpoint_transaction(run, 8) as ckpt:
        manifest = CaptureManifest(
            step=8,
            split="train",
            modules=["m"],
            layers={"m": 0},
            positions="mean",
            position_indices=None,
            seq_len=4,
            token_ids=[[0, 1, 2, 3]] * 2,
        )
        write_capture(ckpt, manifest, {"activations": {"m": t}})
    assert torch.equal(load_capture(tmp_path, 8, "train", "activations", "m"), t)
    assert open_capture(tmp_path, 8, "train").manifest.positions == "mean"


def test_benchmarks_round_trip_and_rows(tmp_path):
    from pico_format import benchmark_rows, read_benchmarks, write_benchmarks

    ckpt = RunPaths(tmp_path).checkpoint(300)
    ckpt.root.mkdir(parents=True)
    assert read_benchmarks(ckpt) is None
    data = {
        "step": 300,
        "harness": "lm-eval",
        "harness_version": "0.4.13",
        "limit": None,
        "tasks": {"t": {"version": 1.0, "n_shot": 0, "metrics": {"acc": 0.5, "acc_stderr": 0.1}}},
    }
    assert write_benchmarks(ckpt, data) == ckpt.benchmarks == ckpt.root / "benchmarks.json"
    assert read_benchmarks(ckpt.root) == data
    assert benchmark_rows(data) == [
        {"step": 300, "task": "t", "metric": "acc", "value": 0.5, "stderr": 0.1, "n_shot": 0}
    ]
    ckpt.benchmarks.write_text(json.dumps({"step": 1, "tasks": {}}))
    with pytest.raises(RunFormatError, match="expected the keys"):
        read_benchmarks(ckpt)


def test_checkpoint_integrity_records_catch_damage(tmp_path, monkeypatch):
    import pico_format.integrity as integrity
    from pico_format import verify_checkpoint

    monkeypatch.setattr(integrity, "FULL_CRC_BYTES", 64)  # exercise the sampled path too
    monkeypatch.setattr(integrity, "SAMPLE_BYTES", 16)
    run = RunPaths(tmp_path)
    with checkpoint_transaction(run, 3) as ckpt:
        (ckpt.root / "small.json").write_text("{}")
        (ckpt.root / "big.bin").write_bytes(bytes(range(256)) * 4)
    ckpt = run.checkpoint(3)
    assert verify_checkpoint(ckpt) is None
    big = ckpt.root / "big.bin"
    data = bytearray(big.read_bytes())
    data[-1] ^= 1  # within the last SAMPLE_BYTES
    big.write_bytes(bytes(data))
    assert "big.bin is corrupt" in verify_checkpoint(ckpt)
    big.write_bytes(bytes(data[:100]))
    assert "big.bin is truncated" in verify_checkpoint(ckpt)
    big.unlink()
    assert "big.bin is missing" in verify_checkpoint(ckpt)
