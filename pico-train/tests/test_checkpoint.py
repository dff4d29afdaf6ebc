"""Checkpoints: plain transformers loads them with identical logits; state round trips."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from pico_format import RunFormatError
from pico_train.checkpoint import load_model, save_model_files
from pico_train.config import ModelConfig
from pico_train.model import PicoDecoder

SHAPES = {
    "mha": ModelConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        mlp_hidden=64,
        vocab_size=101,
        max_seq_len=64,
        rope_theta=500.0,
    ),
    "gqa": ModelConfig(
        d_model=48,
        n_layers=2,
        n_heads=6,
        n_kv_heads=2,
        mlp_hidden=80,
        vocab_size=101,
        max_seq_len=64,
    ),
}

HF_SCRIPT = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM
    out = {}
    ids = load_file(sys.argv[1])["ids"]
    for folder in sys.argv[3:]:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            out[folder.rsplit("/", 1)[-1]] = model(ids).logits.contiguous()
    assert not any(m.startswith("pico") for m in sys.modules), "our packages were imported"
    save_file(out, sys.argv[2])
""")


def test_transformers_loads_checkpoint_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 101, (2, 33))
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    ours = {}
    for name, cfg in SHAPES.items():
        model = PicoDecoder(cfg).eval()
        save_model_files(tmp_path / name, model)
        with torch.no_grad():
            ours[name] = model(ids)
    script = tmp_path / "load_hf.py"
    script.write_text(HF_SCRIPT)
    folders = [str(tmp_path / n) for n in SHAPES]
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "ids.safetensors"),
            str(tmp_path / "hf.safetensors"),
            *folders,
        ],
        check=True,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"},
    )
    theirs = load_file(str(tmp_path / "hf.safetensors"))
    for name in SHAPES:
        torch.testing.assert_close(theirs[name], ours[name], atol=1e-5, rtol=0)
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["model_type"] == "llama" and "auto_map" not in config


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = PicoDecoder(SHAPES["gqa"])
    save_model_files(tmp_path, model)
    again = load_model(tmp_path)
    assert again.config == model.config
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(RunFormatError, match="missing config.json"):
        load_model(tmp_path)
    model = PicoDecoder(SHAPES["mha"])
    save_model_files(tmp_path, model)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(RunFormatError, match="Corrupt weights"):
        load_model(tmp_path)
