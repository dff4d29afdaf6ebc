"""Sources -> Checkpoint: our run format, the original pico-train layout, detection."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pico_analyze.load import (
    LoadRequest,
    MissingData,
    SourceError,
)
from pico_analyze.sources import OriginalRun, PicoRun, open_source
from pico_analyze.sources.original import canonical_name, original_name
from pico_format import RunPaths
from pico_format.modules import module_name
from pico_format.modules import parse_module_name as parse_module

from synthetic_runs import CAPTURED


def full_request(layers=2, splits=("train", "eval")) -> LoadRequest:
    req = LoadRequest()
    for layer in range(layers):
        for suffix in CAPTURED:
            m = module_name(layer, suffix)
            req.add("weights", m)
            for split in splits:
                req.add("activations", m, split)
                req.add("gradients", m, split)
    return req


def test_pico_run_reads_requested_tensors(pico_run):
    src = open_source(pico_run)
    assert isinstance(src, PicoRun)
    assert src.steps() == [0, 10, 20]
    shape = src.shape()
    assert (shape.d_model, shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (
        32,
        2,
        4,
        2,
        8,
    )
    assert src.splits(10) == ["eval", "train"]
    assert src.captured_suffixes() == list(CAPTURED)
    req = LoadRequest()
    req.add("activations", module_name(1, "self_attn.v_proj"), "eval")
    req.add("weights", module_name(0, "self_attn.q_proj"))  # not captured: model.safetensors
    req.add("weights", module_name(0, "mlp.down_proj"))  # captured
    ckpt = src.load(10, req)
    assert set(ckpt.splits) == {"eval"}
    v = ckpt.tensor("activations", module_name(1, "self_attn.v_proj"), "eval")
    assert v.shape == (24, 16) and v.dtype == torch.float32
    assert set(ckpt.weights) == {
        module_name(0, "self_attn.q_proj"),
        module_name(0, "mlp.down_proj"),
    }
    model = load_file(str(RunPaths(pico_run).checkpoint(10).model_weights))
    for m, w in ckpt.weights.items():
        torch.testing.assert_close(w, model[f"{m}.weight"])
    assert len(ckpt.splits["eval"].token_ids) == 24
    with pytest.raises(MissingData, match="gradients"):
        ckpt.tensor("gradients", module_name(1, "self_attn.v_proj"), "eval")
    with pytest.raises(MissingData, match="split 'train'"):
        ckpt.tensor("activations", module_name(1, "self_attn.v_proj"), "train")


def test_pico_run_files_needed_are_only_the_requested_kinds(pico_run):
    src = PicoRun(pico_run)
    req = LoadRequest()
    req.add("activations", module_name(0, "self_attn.v_proj"), "eval")
    req.add("weights", module_name(0, "self_attn.o_proj"))
    files = src.files_needed(20, req)
    assert files == [
        "checkpoints/step_00000020/capture/eval/activations.safetensors",
        "checkpoints/step_00000020/capture/eval/weights.safetensors",
    ]
    req.add("weights", module_name(0, "self_attn.q_proj"))
    assert "checkpoints/step_00000020/model.safetensors" in src.files_needed(20, req)


@pytest.mark.parametrize(
    ("original", "ours"),
    [
        ("_forward_module.module.layers.3.attention.v_proj", "model.layers.3.self_attn.v_proj"),
        ("module.layers.0.attention.o_proj.weight", "model.layers.0.self_attn.o_proj"),
        ("layers.11.swiglu.w_2", "model.layers.11.mlp.down_proj"),
        ("pico_decoder.layers.2.swiglu.w_0", "model.layers.2.mlp.gate_proj"),
        ("model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.v_proj"),
        ("_forward_module.module.embedding_proj", None),
    ],
)
def test_original_module_names_map_to_ours(original, ours):
    assert canonical_name(original) == ours


def test_original_name_inverts_canonical_name():
    assert original_name("model.layers.11.mlp.down_proj") == "layers.11.swiglu.w_2"
    assert (
        original_name("model.layers.3.self_attn.v_proj", "_forward_module.module.")
        == "_forward_module.module.layers.3.attention.v_proj"
    )
    with pytest.raises(ValueError, match="no name in the original"):
        original_name("model.layers.2")  # the residual stream: the original never captured it


def test_original_run_layout(original_run):
    src = open_source(original_run)
    assert isinstance(src, OriginalRun)
    assert src.steps() == [0, 10, 20]
    assert src.shape().n_kv_heads == 2 and src.shape().head_dim == 8
    assert src.splits(10) == ["eval", "train"]
    assert src.splits(20) == ["eval"]  # the final step holds only val files
    ckpt = src.load(20, full_request())
    assert "train" in ckpt.missing_splits and "eval" in ckpt.splits
    act = ckpt.tensor("activations", module_name(0, "self_attn.v_proj"), "eval")
    assert act.dtype == torch.float32  # stored as bf16, upcast
    raw = torch.load(
        original_run / "checkpoints/step_20/learning_dynamics/val_activations.pt", weights_only=True
    )
    assert raw["_forward_module.module.layers.0.attention.v_proj"].dtype == torch.bfloat16
    torch.testing.assert_close(act, raw["_forward_module.module.layers.0.attention.v_proj"].float())
    assert set(ckpt.weights) == {module_name(i, s) for i in range(2) for s in CAPTURED}
    assert ckpt.splits["eval"].token_ids is None


def test_module_names():
    assert module_name(3, "self_attn.v_proj") == "model.layers.3.self_attn.v_proj"
    assert module_name(2, "residual") == "model.layers.2"  # the block output
    assert parse_module("model.layers.2") == (2, "residual")
    assert parse_module("model.layers.11.mlp.down_proj") == (11, "mlp.down_proj")
    assert parse_module("lm_head") is None


def test_open_source_rejects_unknown_folders(tmp_path):
    with pytest.raises(SourceError, match="neither"):
        open_source(tmp_path)
    with pytest.raises(SourceError, match="no such run directory"):
        open_source(tmp_path / "does" / "not" / "exist")


def test_a_mistyped_local_path_is_not_taken_for_a_hub_repo(tmp_path, monkeypatch):
    import huggingface_hub

    def hub_call(*args, **kwargs):
        raise AssertionError("the Hub was asked about a local path")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", hub_call)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub_call)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    for typo in ("runs/dmeo", "./dmeo", "runs/dmeo/", "a/b/c", "~/no-such-run-here"):
        with pytest.raises(SourceError, match=r"^no such run directory: '"):
            open_source(typo)
    assert type(open_source("owner/name")).__name__ == "HubRun"  # no local folder 'owner'
    assert type(open_source("hf://runs/dmeo")).__name__ == "HubRun"  # explicit
