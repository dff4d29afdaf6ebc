"""The pico-train command line: info, generate, and errors as one clear line."""

import pytest
import torch
from click.testing import CliRunner

from pico_train.checkpoint import save_model_files
from pico_train.cli import main
from pico_train.model import PicoDecoder
from pico_train.tokenizer import load_tokenizer
from pico_train.train import train

from tiny_runs import tiny_config


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_info_preset_prints_counts_and_flops():
    out = invoke("info", "--preset", "small").output
    assert "64,595,328 total" in out and "25,961,856 without embeddings" in out
    assert "training FLOPs/token at context 2048: 384,860,160" in out
    assert "1,457,596,416" in invoke("info", "--all-presets").output


def test_info_errors_are_one_line():
    result = CliRunner().invoke(main, ["info", "--set", "model.n_kv_heads=5"])
    assert result.exit_code == 2
    assert "error: model.n_kv_heads" in result.output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    config = tiny_config(folder / "unused")
    torch.manual_seed(0)
    save_model_files(folder, PicoDecoder(config.model), load_tokenizer(config))
    return folder


def test_generate_greedy_with_and_without_cache(checkpoint):
    args = [
        "generate",
        str(checkpoint),
        "--prompt",
        "ROMEO:",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
    ]
    cached = invoke(*args).output
    assert cached.startswith("ROMEO:") and len(cached) > len("ROMEO:\n")
    assert invoke(*args, "--no-cache").output == cached


def test_generate_sampling_is_seeded(checkpoint):
    args = ["generate", str(checkpoint), "--prompt", "JULIET:", "--max-new-tokens", "12"]
    a = invoke(*args, "--seed", "3").output
    assert a == invoke(*args, "--seed", "3").output
    assert a != invoke(*args, "--seed", "4").output


def test_info_run_lists_checkpoint_contents(tmp_path):
    result = train(
        tiny_config(
            tmp_path / "run",
            "training.max_steps=2",
            "checkpointing.every=2",
            "checkpointing.steps=[]",
        )
    )
    out = invoke("info", result.run_dir).output
    assert "1 checkpoints, latest step 2" in out
    assert "capture eval: 4 sequences x 32 tokens, positions last, 6 modules" in out
    assert "capture train" in out
    gen = invoke("generate", result.run_dir, "--prompt", "KING:", "--max-new-tokens", "5")
    assert gen.exit_code == 0 and gen.output.startswith("KING:")  # a run dir: its latest step
