"""Benchmark evaluation: checkpoints -> EleutherAI's lm-evaluation-harness -> benchmarks.json.

Reads checkpoint folders (a checkpoint, a run's latest, or chosen steps of a run: several steps
give benchmark-over-training results); runs ``lm_eval.simple_evaluate`` with the harness's own
Hugging Face model class (``HFLM``) on each folder, since a pico checkpoint is a transformers
Llama checkpoint; writes each checkpoint's ``benchmarks.json`` (schema in
``pico_format.benchmarks``) and returns the results for a printed table.

Tasks are the harness's names (the model card's: :data:`CARD_TASKS`) or tasks defined by YAML
files in ``include_path`` folders (for example a multiple-choice task over a local JSON file).
The harness's own tasks read their data from the Hugging Face Hub; before loading them this
module probes the Hub once (a few seconds at most) and, when it is unreachable, switches the
Hub and datasets libraries to offline mode, so a task whose data is not cached fails at once with
one line (:class:`HarnessError`) instead of retrying.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pico_format import CheckpointPaths, RunFormatError, benchmark_rows, write_benchmarks
from pico_format.hub import hub_unreachable
from pico_train.checkpoint import checkpoint_step, find_checkpoints

__all__ = ["CARD_TASKS", "HarnessError", "evaluate_checkpoints", "format_table", "task_results"]

# The PiCo 1B model card's benchmarks (lm-eval task names; few-shot as each task defines it).
CARD_TASKS = (
    "mmlu",
    "gsm8k",
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "humaneval",
    "truthfulqa_mc2",
)
# Tasks whose scoring executes model-written code (lm-eval asks for explicit consent).
CODE_TASKS = ("humaneval",)


class HarnessError(RuntimeError):
    """An evaluation that cannot run as asked (one line for the CLI)."""


@dataclass
class EvalResult:
    ckpt: CheckpointPaths
    benchmarks: dict[str, Any]


def _go_offline() -> None:
    """Offline mode for huggingface_hub and datasets, also when they are already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config as datasets_config

        datasets_config.HF_HUB_OFFLINE = True
        if hasattr(datasets_config, "HF_DATASETS_OFFLINE"):
            datasets_config.HF_DATASETS_OFFLINE = True


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _failure(what: str, err: Exception, hub_tasks: list[str]) -> str:
    """One line: what failed, the error's first line, and the offline hint when it applies."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    hint = (
        f" (offline: the Hub datasets of {hub_tasks} are not in the local cache; run once with "
        f"network access, or define local tasks with --include-path)"
        if _offline() and hub_tasks
        else ""
    )
    return f"{what}: {type(err).__name__}: {first}{hint}"


def _metric_key(name: str) -> str:
    """lm-eval's "acc,none" -> "acc"; "exact_match,strict-match" -> "exact_match:strict-match";
    "acc_stderr,none" -> "acc_stderr"; "exact_match_stderr,flex" -> "exact_match:flex_stderr"."""
    metric, _, filt = name.partition(",")
    if filt in ("", "none"):
        return metric
    if metric.endswith("_stderr"):
        return f"{metric.removesuffix('_stderr')}:{filt}_stderr"
    return f"{metric}:{filt}"


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None  # lm-eval writes "N/A" for a stderr it could not compute


def task_results(raw: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """lm-eval's results dict -> {task: {"version", "n_shot", "metrics"}} for the asked tasks
    (a group such as mmlu keeps its aggregate; its subtasks are left out)."""
    scores = {**raw.get("results", {}), **raw.get("groups", {})}
    out = {}
    for task in tasks:
        if task not in scores:
            continue
        metrics = {_metric_key(k): _number(v) for k, v in scores[task].items() if "," in k}
        out[task] = {
            "version": raw.get("versions", {}).get(task),
            "n_shot": raw.get("n-shot", {}).get(task),
            "metrics": metrics,
        }
    return out


def _task_manager(tasks: list[str], include_path: list[str]):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise HarnessError(
            f"unknown task(s) {unknown}: not lm-eval tasks and not defined in --include-path "
            f"{include_path or '(none given)'}."
        )
    return manager


def _local_tasks(include_path: list[str]) -> set[str]:
    """Names of the tasks defined by YAML files in the include paths."""
    import yaml

    names = set()
    for folder in include_path:
        for path in Path(folder).rglob("*.yaml"):
            try:
                spec = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(spec, dict) and isinstance(spec.get("task"), str):
                names.add(spec["task"])
    return names


def evaluate_checkpoints(
    source: str | Path,
    *,
    tasks: list[str] | None = None,
    steps: list[int] | str | None = None,
    limit: int | None = None,
    include_path: list[str] | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    allow_code_execution: bool = False,
    log=print,
) -> list[EvalResult]:
    """Evaluate checkpoints of `source` on `tasks`; write each one's benchmarks.json."""
    include_path = [str(p) for p in include_path or []]
    tasks = _choose_tasks(tasks, allow_code_execution, log)
    if limit is not None and limit < 1:
        raise HarnessError(f"--limit must be a positive number of examples, not {limit}.")
    try:
        ckpts = find_checkpoints(source, steps)
    except RunFormatError as err:
        raise HarnessError(str(err)) from None

    hub_tasks = [t for t in tasks if t not in _local_tasks(include_path)]
    if hub_tasks and not _offline() and hub_unreachable(timeout=3.0):
        log("note: the Hugging Face Hub is unreachable; using only locally cached datasets.")
        _go_offline()
    if allow_code_execution:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"

    import torch

    manager = _task_manager(tasks, include_path)
    try:  # read every task's data once before any model is loaded: fail fast, in one line
        manager.load(tasks)
    except Exception as err:
        raise HarnessError(_failure("could not load the tasks", err, hub_tasks)) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = {
        "tasks": tasks,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "task_manager": manager,
        "confirm_run_unsafe_code": allow_code_execution,
    }
    results = []
    for ckpt in ckpts:
        log(f"step {checkpoint_step(ckpt)}: evaluating {ckpt.root} on {', '.join(tasks)}")
        raw = _evaluate_one(ckpt, device, batch_size, run, hub_tasks)
        benchmarks = {
            "step": checkpoint_step(ckpt),
            "harness": "lm-eval",
            "harness_version": version("lm-eval"),
            "limit": limit,
            "tasks": task_results(raw, tasks),
        }
        write_benchmarks(ckpt, benchmarks)
        results.append(EvalResult(ckpt, benchmarks))
    return results


def _choose_tasks(tasks: list[str] | None, allow_code_execution: bool, log) -> list[str]:
    """The card's tasks by default; tasks scored by running model-written code need consent."""
    if tasks is None:
        if not allow_code_execution:
            log(
                f"note: skipping {list(CODE_TASKS)} (scoring runs model-written code; pass "
                f"--allow-code-execution to include it)."
            )
        return [t for t in CARD_TASKS if allow_code_execution or t not in CODE_TASKS]
    if not allow_code_execution and (code := [t for t in tasks if t in CODE_TASKS]):
        raise HarnessError(
            f"{code} score by executing model-written code: pass --allow-code-execution."
        )
    return tasks


def _evaluate_one(ckpt, device: str, batch_size, run: dict[str, Any], hub_tasks: list[str]):
    """lm-eval's raw results for one checkpoint folder, loaded through its HF model class."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model = HFLM(
        pretrained=str(ckpt.root),
        device=device,
        dtype="bfloat16" if device.startswith("cuda") else "float32",
        batch_size=batch_size,
    )
    try:
        return lm_eval.simple_evaluate(model=model, log_samples=False, **run)
    except Exception as err:
        raise HarnessError(_failure("lm-eval failed", err, hub_tasks)) from None


def format_table(results: list[EvalResult]) -> str:
    """A text table: step, task, n-shot, metric, value, stderr."""
    rows = [("step", "task", "n-shot", "metric", "value", "stderr")]
    for r in results:
        for row in benchmark_rows(r.benchmarks):
            err = "" if row["stderr"] is None else f"{row['stderr']:.4f}"
            rows.append(
                (
                    str(row["step"]),
                    row["task"],
                    str(row["n_shot"]),
                    row["metric"],
                    f"{row['value']:.4f}",
                    err,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
