"""The pico-train command line: info, generate, and errors as one clear line."""

import pytest
import torch
from click.testing import CliRunner

from pico_format import RunPaths
from pico_format.benchmarks import write_benchmarks
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
    assert "benchmarks" not in out
    scores = {"acc": 0.25, "acc_stderr": 0.04, "acc_norm": 0.5}
    write_benchmarks(
        RunPaths(result.run_dir).checkpoint(2),
        {
            "step": 2,
            "harness": "lm-eval",
            "harness_version": "0.4.13",
            "limit": 100,
            "tasks": {"arc_easy": {"version": 1.0, "n_shot": 0, "metrics": scores}},
        },
    )
    out = invoke("info", result.run_dir).output
    assert (
        "benchmarks (lm-eval, limit 100): arc_easy acc 0.250 +- 0.040; arc_easy acc_norm 0.500"
        in out
    )
    gen = invoke("generate", result.run_dir, "--prompt", "KING:", "--max-new-tokens", "5")
    assert gen.exit_code == 0 and gen.output.startswith("KING:")  # a run dir: its latest step


def test_version_on_both_commands():
    from pico_analyze.cli import main as analyze_main

    assert invoke("--version").output.startswith("pico-train, version ")
    result = CliRunner().invoke(analyze_main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("pico-analyze, version ")


def test_config_command_prints_the_full_resolved_config():
    import yaml

    result = invoke("config", "--preset", "small", "--set", "training.max_steps=700")
    out = result.stdout  # the note about the vocabulary goes to stderr
    assert "note: model.vocab_size=50304" in result.stderr
    assert "&id" not in out and "*id" not in out
    raw = yaml.safe_load(out)
    assert raw["run_dir"] == "runs/small" and raw["training"]["max_steps"] == 700
    assert raw["model"]["d_model"] == 384 and "modules" in raw["capture"]  # every default


@pytest.mark.parametrize(
    "args,message",
    [
        (["info", "runs/dmeo"], "no such run directory: 'runs/dmeo'"),
        (["info", "--set", "training.max_steps", "5"], "must look like section.key=value"),
        (["info", "--bogus"], "No such option '--bogus'"),
        (["train", "--device", "banana"], "'banana' is not one of"),
    ],
)
def test_usage_mistakes_are_refused_in_one_line(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert message in result.output


def test_cuda_device_without_cuda_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(
        main, ["train", "--device", "cuda", "--set", f"run_dir={tmp_path / 'run'}"]
    )
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_is_announced_and_the_final_line_counts_this_invocation(tmp_path):
    args = ["train", "--set", f"run_dir={tmp_path / 'run'}"]
    for o in ["training.max_steps=2", "checkpointing.every=2", "checkpointing.steps=[]"]:
        args += ["--set", o]
    from tiny_runs import TINY

    base = [a for o in TINY for a in ("--set", o)]
    first = CliRunner().invoke(main, [*args[:1], *base, *args[1:]])
    assert first.exit_code == 0, first.output
    assert "done: 2 steps in" in first.output and "resuming" not in first.output
    more = CliRunner().invoke(main, [*args[:1], *base, *args[1:], "--set", "training.max_steps=4"])
    assert more.exit_code == 0, more.output
    assert f"resuming from step 2 of {tmp_path / 'run'}" in more.output
    assert "done: 2 steps (steps 2 -> 4) in" in more.output


def test_progress_without_a_terminal_has_no_carriage_returns(tmp_path):
    from tiny_runs import TINY

    args = [a for o in TINY for a in ("--set", o)]
    more = ["run_dir=" + str(tmp_path / "run"), "training.max_steps=3", "checkpointing.every=3"]
    more += ["checkpointing.steps=[]", "logging.progress=true", "capture.enabled=false"]
    result = CliRunner().invoke(main, ["train", *args, *[a for o in more for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert "train: step 3/3, loss " in result.output
