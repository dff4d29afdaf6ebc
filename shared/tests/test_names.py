"""The names of the format: module names, folder names and the one atomic write."""

import os

import pytest

from pico_format import (
    BLOCK_SUFFIXES,
    DEFAULT_CAPTURE_SUFFIXES,
    RESIDUAL,
    RunPaths,
    atomic_path,
    layer_index,
    module_name,
    parse_module_name,
    weight_name,
    write_bytes_atomic,
)


def test_module_name_spells_transformers_llama_names():
    # The names are a contract with transformers' LlamaForCausalLM: spelled out here once.
    assert module_name(3, "self_attn.v_proj") == "model.layers.3.self_attn.v_proj"
    assert module_name(11, "mlp.down_proj") == "model.layers.11.mlp.down_proj"
    assert module_name(2, RESIDUAL) == "model.layers.2"  # the block: its output is the stream
    assert module_name("*", "mlp.down_proj") == "model.layers.*.mlp.down_proj"  # a pattern
    assert weight_name("model.layers.0.mlp.up_proj") == "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("suffix", (*BLOCK_SUFFIXES, RESIDUAL))
def test_parse_module_name_inverts_module_name(suffix):
    for layer in (0, 7, 123):
        name = module_name(layer, suffix)
        assert parse_module_name(name) == (layer, suffix)
        assert layer_index(name) == layer


def test_names_outside_the_blocks():
    for name in ("lm_head", "model.embed_tokens", "model.norm", "layers.3.self_attn.v_proj"):
        assert parse_module_name(name) is None
        assert layer_index(name) == -1
    assert set(DEFAULT_CAPTURE_SUFFIXES) <= set(BLOCK_SUFFIXES)


def test_run_folders_are_declared(tmp_path):
    run = RunPaths(tmp_path)
    assert run.analysis == tmp_path / "analysis"
    assert run.tensorboard == tmp_path / "tensorboard"
    assert run.checkpoint(5).tokenizer.name == "tokenizer.json"


def test_atomic_path_publishes_whole_files_only(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"  # untouched, and no temporary left behind
    assert os.listdir(target.parent) == ["file.bin"]
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["file.bin"]
