"""pico-train eval: the real lm-eval harness on a local task, checked against our own scoring."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pico_format import RunPaths, checkpoint_transaction, read_benchmarks
from pico_train.checkpoint import save_model_files
from pico_train.config import ModelConfig
from pico_train.harness import (
    HarnessError,
    _metric_key,
    evaluate_checkpoints,
    format_table,
    task_results,
)
from pico_train.model import PicoDecoder
from pico_train.tokenizer import train_bpe_tokenizer

pytest.importorskip("lm_eval")

TEXTS = ["To be, or not to be, that is the question.", "My lord, I will obey."] * 30
DOCS = [
    {"question": "To be, or not to", "choices": ["be", "dog", "the question"], "answer": 0},
    {"question": "My lord, I", "choices": ["will", "obey", "not"], "answer": 1},
    {"question": "that is the", "choices": ["question", "lord", "be"], "answer": 0},
    {"question": "I will", "choices": ["obey.", "be", "question"], "answer": 2},
]
TASK = """task: pico_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 2.0
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run with checkpoints at steps 0 and 5 (different random weights) and a local task."""
    root = tmp_path_factory.mktemp("harness")
    tokenizer = train_bpe_tokenizer(TEXTS, 300, cache_dir=root / "cache")
    c = ModelConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=64,
        vocab_size=320,
        max_seq_len=64,
    )
    run = RunPaths(root / "run")
    run.root.mkdir()
    models = {}
    for step in (0, 5):
        torch.manual_seed(step)
        model = PicoDecoder(c).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(0, 0.3)
        with checkpoint_transaction(run, step) as ckpt:
            save_model_files(ckpt.root, model, tokenizer)
        models[step] = model
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "local.json").write_text(json.dumps(DOCS))
    (tasks / "local.yaml").write_text(TASK.format(data=tasks / "local.json"))
    return {"run": run, "models": models, "tokenizer": tokenizer, "tasks": tasks}


def _reference_scores(model, tokenizer) -> dict[str, float]:
    """acc / acc_norm computed here: argmax over choices of sum log p(" " + choice | question)
    (acc_norm divides by the choice's length in characters), the continuation being the tokens
    of question + " " + choice after the question's (the harness's default delimiter)."""
    hits = {"acc": 0, "acc_norm": 0}
    for doc in DOCS:
        ctx = tokenizer(doc["question"])["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["question"] + " " + choice)["input_ids"]
            cont = whole[len(ctx) :]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole]))[0].double(), -1)
            ll = sum(logp[len(whole) - len(cont) - 1 + i, t].item() for i, t in enumerate(cont))
            scores.append((ll, ll / len(choice)))
        hits["acc"] += max(range(len(scores)), key=lambda i: scores[i][0]) == doc["answer"]
        hits["acc_norm"] += max(range(len(scores)), key=lambda i: scores[i][1]) == doc["answer"]
    return {k: v / len(DOCS) for k, v in hits.items()}


def test_local_task_over_steps_matches_our_scoring(setup, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = evaluate_checkpoints(
        setup["run"].root,
        tasks=["pico_local"],
        steps="all",
        include_path=[str(setup["tasks"])],
        device="cpu",
        log=lambda m: None,
    )
    assert [r.benchmarks["step"] for r in results] == [0, 5]
    for step, model in setup["models"].items():
        data = read_benchmarks(setup["run"].checkpoint(step))
        assert data["harness"] == "lm-eval" and data["harness_version"]
        assert data["limit"] is None
        entry = data["tasks"]["pico_local"]
        assert entry["version"] == 2.0 and entry["n_shot"] == 0
        expected = _reference_scores(model, setup["tokenizer"])
        assert entry["metrics"]["acc"] == pytest.approx(expected["acc"])
        assert entry["metrics"]["acc_norm"] == pytest.approx(expected["acc_norm"])
        assert entry["metrics"]["acc_stderr"] > 0
    table = format_table(results)
    assert table.splitlines()[0].split() == ["step", "task", "n-shot", "metric", "value", "stderr"]
    assert len(table.splitlines()) == 1 + 2 * 2


def test_limit_is_recorded(setup, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (result,) = evaluate_checkpoints(
        setup["run"].root,
        tasks=["pico_local"],
        limit=2,
        include_path=[str(setup["tasks"])],
        device="cpu",
        log=lambda m: None,
    )
    assert result.benchmarks["step"] == 5 and result.benchmarks["limit"] == 2


def test_requests_that_cannot_run_are_refused_in_one_line(setup, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = setup["run"].root
    with pytest.raises(HarnessError, match="no checkpoint at step 3"):
        evaluate_checkpoints(run, tasks=["pico_local"], steps=[3])
    with pytest.raises(HarnessError, match="humaneval.*--allow-code-execution"):
        evaluate_checkpoints(run, tasks=["humaneval"])
    with pytest.raises(HarnessError, match="unknown task"):
        evaluate_checkpoints(run, tasks=["no_such_task_xyz"], include_path=[str(setup["tasks"])])


def test_metric_names_and_groups():
    assert _metric_key("acc,none") == "acc"
    assert _metric_key("acc_stderr,none") == "acc_stderr"
    assert _metric_key("exact_match,strict-match") == "exact_match:strict-match"
    assert _metric_key("exact_match_stderr,strict-match") == "exact_match:strict-match_stderr"
    raw = {
        "results": {
            "mmlu": {"alias": "mmlu", "acc,none": 0.3, "acc_stderr,none": "N/A"},
            "mmlu_anatomy": {"acc,none": 0.2},
        },
        "groups": {"mmlu": {"acc,none": 0.31, "acc_stderr,none": 0.01}},
        "versions": {"mmlu": 2},
        "n-shot": {"mmlu": 5},
    }
    assert task_results(raw, ["mmlu"]) == {
        "mmlu": {"version": 2, "n_shot": 5, "metrics": {"acc": 0.31, "acc_stderr": 0.01}}
    }


@pytest.mark.slow
def test_cli_eval_table_and_offline_hub_task_in_one_line(setup):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    base = [sys.executable, "-m", "pico_train.cli", "eval", str(setup["run"].root)]
    ok = subprocess.run(
        [*base, "--tasks", "pico_local", "--steps", "0,5", "--include-path", str(setup["tasks"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.splitlines()[0].split()[:2] == ["step", "task"]
    assert len(ok.stdout.splitlines()) == 5
    hub = subprocess.run(
        [*base, "--tasks", "arc_easy", "--limit", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert hub.returncode == 2
    errors = [line for line in hub.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "arc_easy" in errors[0] and "offline" in errors[0]
    assert "Traceback" not in hub.stderr and "etry" not in hub.stderr  # no retry storm
