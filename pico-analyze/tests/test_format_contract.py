"""The run-directory contract on a real run: pico-train's writer and pico-analyze's reader agree.

A tiny model is trained by pico-train for two steps (checkpoints 0 and 2, every capture option
that adds files or modules). Every path the run should hold is built through pico_format's
RunPaths / CheckpointPaths, every module name through module_name, and the run on disk must hold
exactly those files; pico-analyze must then read back, through the same names, exactly what
pico-train wrote. Nothing here spells a file or module name by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pico_analyze import analyze_run
from pico_analyze.load import LoadRequest
from pico_analyze.sources import PicoRun, open_source
from pico_format import (
    CAPTURE_KINDS,
    CAPTURE_SPLITS,
    DEFAULT_CAPTURE_SUFFIXES,
    RESIDUAL,
    CaptureReader,
    RunPaths,
    latest_step,
    list_checkpoints,
    module_name,
    read_json,
    weight_name,
)
from pico_format.modules import ATTENTION_SUFFIXES, MLP_SUFFIXES
from pico_train.config import load_config
from pico_train.train import train

# One xdist worker runs these, so the run is trained once.
pytestmark = pytest.mark.xdist_group("contract")

N_LAYERS = 2
OVERRIDES = [
    "preset=demo",
    "model.d_model=32",
    f"model.n_layers={N_LAYERS}",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.mlp_hidden=64",
    "model.vocab_size=512",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.tokenizer_vocab_size=300",
    "data.eval_sequences=4",
    "training.global_batch_size=4",
    "training.micro_batch_size=2",
    "training.max_steps=2",
    "training.warmup_steps=1",
    "checkpointing.every=0",
    "checkpointing.steps=[0]",
    "checkpointing.keep_states=1",  # step 0's training state is pruned: its files must go
    "evaluation.batch_size=4",
    "capture.batch_size=4",
    "capture.micro_batch_size=2",
    "capture.residual=true",
    "logging.progress=false",
    "logging.tensorboard=true",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    root = tmp_path_factory.mktemp("contract") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PICO_CACHE", str(tmp_path_factory.getbasetemp() / "pico-cache"))
        result = train(load_config(overrides=[*OVERRIDES, f"run_dir={root}"], note=None))
    assert result.checkpoints == [0, 2]
    return RunPaths(root)


def captured_modules() -> list[str]:
    """The modules pico-train captures with the default patterns plus capture.residual, in
    layer order: each block (its output, the residual stream), then its modules in model order."""
    return [
        module_name(layer, suffix)
        for layer in range(N_LAYERS)
        for suffix in (RESIDUAL, *DEFAULT_CAPTURE_SUFFIXES)
    ]


def expected_files(run: RunPaths, step: int, tokenizer_files: set[str]) -> set[Path]:
    ckpt = run.checkpoint(step)
    files = {ckpt.model_config, ckpt.model_weights, ckpt.generation_config, ckpt.eval}
    files |= {ckpt.root / name for name in tokenizer_files}
    if step == latest_step(run):  # keep_states=1: only the newest checkpoint keeps its state
        files |= {ckpt.optimizer, ckpt.rng, ckpt.trainer}
    for split in CAPTURE_SPLITS:
        # The captured weights are read from model.safetensors (CaptureManifest.weights_in_model)
        kinds = [kind for kind in CAPTURE_KINDS if kind != "weights"]
        files |= {ckpt.capture_file(split, kind) for kind in kinds}
        files |= {ckpt.capture_manifest(split), ckpt.capture_text(split)}
    return files | {ckpt.manifest}


def test_run_holds_exactly_the_files_pico_format_names(run, tmp_path):
    from transformers import AutoTokenizer

    assert {run.info, run.config, run.log, run.latest} <= {p for p in run.root.iterdir()}
    assert run.tensorboard.is_dir() and any(run.tensorboard.iterdir())
    assert list_checkpoints(run) == [0, 2] and latest_step(run) == 2
    # The tokenizer files are whatever save_pretrained writes (tokenizer.json among them).
    tokenizer = AutoTokenizer.from_pretrained(str(run.checkpoint(2).root))
    tokenizer.save_pretrained(str(tmp_path))
    tokenizer_files = {p.name for p in tmp_path.iterdir()}
    assert run.checkpoint(2).tokenizer.name in tokenizer_files
    for step in (0, 2):
        ckpt = run.checkpoint(step)
        on_disk = {p for p in ckpt.root.rglob("*") if p.is_file()}
        assert on_disk == expected_files(run, step, tokenizer_files)
        listed = {ckpt.root / name for name in read_json(ckpt.manifest)["files"]}
        # checkpoint.json lists what the folder held when it was closed (the state, since pruned,
        # included)
        assert listed == on_disk - {ckpt.manifest} | {ckpt.optimizer, ckpt.rng, ckpt.trainer}


def test_module_names_of_the_writer(run):
    ckpt = run.checkpoint(2)
    for split in CAPTURE_SPLITS:
        manifest = CaptureReader(ckpt, split).manifest
        assert manifest.split == split and manifest.step == 2
        assert manifest.modules == captured_modules()
        assert manifest.layers == {
            module_name(layer, suffix): layer
            for layer in range(N_LAYERS)
            for suffix in (RESIDUAL, *DEFAULT_CAPTURE_SUFFIXES)
        }
        blocks = {module_name(layer, RESIDUAL) for layer in range(N_LAYERS)}
        assert set(manifest.tensors["activations"]) == set(captured_modules())
        assert set(manifest.tensors["weights"]) == set(manifest.tensors["gradients"])
        assert set(manifest.tensors["weights"]) == set(captured_modules()) - blocks
    with safe_open(str(ckpt.model_weights), framework="pt") as f:
        keys = set(f.keys())
    for layer in range(N_LAYERS):
        for suffix in (*ATTENTION_SUFFIXES, *MLP_SUFFIXES):
            assert weight_name(module_name(layer, suffix)) in keys


def test_the_reader_sees_what_the_writer_wrote(run):
    source = open_source(run.root)
    assert isinstance(source, PicoRun)
    assert source.steps() == list_checkpoints(run)
    for step in source.steps():
        assert sorted(source.splits(step)) == sorted(CAPTURE_SPLITS)
    assert source.captured_suffixes() == [RESIDUAL, *DEFAULT_CAPTURE_SUFFIXES]
    shape = source.shape()
    assert (shape.n_layers, shape.d_model, shape.n_heads, shape.n_kv_heads) == (N_LAYERS, 32, 4, 2)

    request = LoadRequest()
    for name in captured_modules():
        for split in CAPTURE_SPLITS:
            request.add("activations", name, split)
    q_proj = [module_name(layer, "self_attn.q_proj") for layer in range(N_LAYERS)]
    for name in q_proj:  # not captured: read from model.safetensors
        request.add("weights", name)
    checkpoint = source.load(2, request)
    ckpt = run.checkpoint(2)
    for split in CAPTURE_SPLITS:
        reader = CaptureReader(ckpt, split)
        assert checkpoint.splits[split].token_ids == reader.manifest.token_ids
        for name in captured_modules():
            written = reader.get("activations", name).float()
            assert torch.equal(checkpoint.tensor("activations", name, split), written)
    with safe_open(str(ckpt.model_weights), framework="pt") as f:
        for name in q_proj:
            assert torch.equal(checkpoint.tensor("weights", name), f.get_tensor(weight_name(name)))


def test_analysis_is_written_where_the_layout_declares(run):
    result = analyze_run(run.root, progress=False)
    assert Path(result.out_dir) == run.analysis
    assert Path(result.table_path).parent == run.analysis and Path(result.table_path).is_file()
    assert result.rows
