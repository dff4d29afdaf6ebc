"""End to end through the CLI: train -> eval (lm-eval, local task) -> export (fp16 + GGUF) ->
load back with transformers and compare with our model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pico_format import RunPaths, latest_step, read_benchmarks, read_run_info
from pico_train.checkpoint import load_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPT = "To be, or not to be, that is the question:"

pytestmark = pytest.mark.slow


def _cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pico_train.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


def _check_export(ckpt_root: Path, out: Path, gguf_type: str, prompt: str) -> dict:
    """Our model vs transformers on the fp16 export and on the GGUF: logits and greedy text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = load_model(ckpt_root).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        reference = ours(ids)
    scale = reference.abs().max()
    fp16 = AutoModelForCausalLM.from_pretrained(str(out)).eval().float()
    with torch.no_grad():
        fp16_error = ((fp16(ids).logits - reference).abs().max() / scale).item()
    (gguf_file,) = [p.name for p in out.glob("*.gguf")]
    assert gguf_file.endswith(f"-{gguf_type}.gguf")
    gguf = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gguf_file).eval()
    with torch.no_grad():
        gguf_error = ((gguf(ids).logits - reference).abs().max() / scale).item()
    greedy = ours.generate(ids, 12, temperature=0.0)[0].tolist()
    gguf_greedy = gguf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    return {
        "fp16_error": fp16_error,
        "gguf_error": gguf_error,
        "greedy_equal": gguf_greedy[0].tolist() == greedy,
    }


def test_demo_run_evaluates_and_exports(tmp_path):
    run = tmp_path / "demo"
    _cli(
        "train",
        "--config",
        CONFIGS / "demo.yaml",
        *_sets(
            f"run_dir={run}",
            "training.max_steps=40",
            "training.warmup_steps=4",
            "checkpointing.every=20",
            "checkpointing.steps=[0]",
            "logging.progress=false",
            "capture.enabled=false",
        ),
    )
    step = latest_step(RunPaths(run))
    assert step == 40
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [{"q": "To be, or not to", "c": ["be", "lord"], "a": 0}] * 3
    (tasks / "d.json").write_text(json.dumps(docs))
    (tasks / "t.yaml").write_text(
        f"task: shakespeare_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'd.json'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{c}}"\ndoc_to_target: "{{a}}"\n'
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n"
    )
    table = _cli(
        "eval", run, "--tasks", "shakespeare_mc", "--steps", "all", "--include-path", tasks
    ).stdout
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["0", "20", "40"]
    ckpt = RunPaths(run).checkpoint(40)
    assert read_benchmarks(ckpt)["tasks"]["shakespeare_mc"]["metrics"]["acc"] in (0.0, 1.0)

    out = tmp_path / "release"
    _cli("export", run, "--out", out, "--gguf", "q8_0")
    result = _check_export(ckpt.root, out, "q8_0", PROMPT)
    assert result["fp16_error"] < 1e-2
    assert result["gguf_error"] < 2e-2, result
    assert result["greedy_equal"], result
    card = (out / "README.md").read_text()
    assert "| steps | 40 |" in card and "| shakespeare_mc | 0 | acc |" in card
    assert "hardware | 1 x CPU" in card
    assert read_run_info(RunPaths(run)).extra["hardware"].startswith("1 x CPU")


def test_1b_vocabulary_and_heads_with_qwen2_train_and_export(tmp_path):
    """The 1b preset's vocabulary (151,936 rows), heads (16, KV 8) and Qwen2 tokenizer, with 2
    layers and d_model 256 so it fits a CI machine; 2 steps at context 32."""
    run = tmp_path / "qwen"
    _cli(
        "train",
        "--preset",
        "1b",
        *_sets(
            f"run_dir={run}",
            "model.n_layers=2",
            "model.d_model=256",
            "model.mlp_hidden=512",
            "model.max_seq_len=64",
            "data.seq_len=32",
            "data.eval_sequences=2",
            "training.max_steps=2",
            "training.warmup_steps=1",
            "training.global_batch_size=2",
            "training.micro_batch_size=2",
            "training.compile=false",
            "checkpointing.every=2",
            "checkpointing.steps=[0]",
            "capture.enabled=false",
            "evaluation.batch_size=2",
            "logging.progress=false",
        ),
    )
    ckpt = RunPaths(run).checkpoint(2)
    config = json.loads(ckpt.model_config.read_text())
    assert (config["vocab_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (
        151936,
        16,
        8,
    )
    tok_config = json.loads((ckpt.root / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    out = tmp_path / "release"
    _cli("export", run, "--out", out, "--gguf", "f16")
    result = _check_export(ckpt.root, out, "f16", "Hello 世界, 123")
    assert result["fp16_error"] < 1e-2 and result["gguf_error"] < 1e-2, result
    card = (out / "README.md").read_text()
    assert "Qwen2 byte-level BPE" in card and "151,646 tokens" in card
    assert "rows 151,646..151,935 of the 151,936-row embedding are padding" in card
