"""benchmarks.json: benchmark scores of one checkpoint, written by `pico-train eval`.

Schema (one file per checkpoint, ``CheckpointPaths.benchmarks``)::

    {"step": 300,                        # the checkpoint's training step (null: a model folder
                                         # outside a run)
     "harness": "lm-eval",               # which harness produced the scores
     "harness_version": "0.4.13",
     "limit": 50 | null,                 # examples per task (null: the whole task)
     "tasks": {"arc_easy": {"version": 1.0, "n_shot": 0,
                            "metrics": {"acc": 0.61, "acc_stderr": 0.01,
                                        "acc_norm": 0.55, "acc_norm_stderr": 0.01}}}}

Metric names are the harness's, without its ",filter" suffix; a stderr is the metric's name plus
``_stderr``. Readers: :func:`read_benchmarks` (one checkpoint) and :func:`benchmark_rows` (a tidy
row per task and metric, for a results table).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pico_format.layout import CheckpointPaths
from pico_format.run import RunFormatError, read_json, write_json_atomic

__all__ = ["read_benchmarks", "write_benchmarks", "benchmark_rows"]

_KEYS = ("step", "harness", "harness_version", "limit", "tasks")


def _check(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict) or any(k not in data for k in _KEYS):
        raise RunFormatError(f"{source}: expected the keys {list(_KEYS)}.")
    if not isinstance(data["step"], (int, type(None))) or not isinstance(data["tasks"], dict):
        raise RunFormatError(
            f"{source}: 'step' must be an integer (or null) and 'tasks' an object."
        )
    for name, task in data["tasks"].items():
        if not isinstance(task, dict) or not isinstance(task.get("metrics"), dict):
            raise RunFormatError(f"{source}: task '{name}' has no 'metrics' object.")
        for metric, value in task["metrics"].items():
            if value is not None and not isinstance(value, (int, float)):
                raise RunFormatError(f"{source}: {name}/{metric} is not a number: {value!r}.")
    return data


def read_benchmarks(ckpt: CheckpointPaths | str | Path) -> dict[str, Any] | None:
    """The checkpoint's benchmarks.json as a dict (schema above), or None when not evaluated."""
    ckpt = ckpt if isinstance(ckpt, CheckpointPaths) else CheckpointPaths(Path(ckpt))
    if not ckpt.benchmarks.is_file():
        return None
    return _check(read_json(ckpt.benchmarks), str(ckpt.benchmarks))


def write_benchmarks(ckpt: CheckpointPaths | str | Path, data: dict[str, Any]) -> Path:
    """Validate and write benchmarks.json atomically; returns its path."""
    ckpt = ckpt if isinstance(ckpt, CheckpointPaths) else CheckpointPaths(Path(ckpt))
    _check(data, "benchmarks")
    write_json_atomic(ckpt.benchmarks, data)
    return ckpt.benchmarks


def benchmark_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, metric) with its stderr: step, task, metric, value, stderr, n_shot."""
    rows = []
    for task, entry in sorted(data["tasks"].items()):
        metrics = entry["metrics"]
        for name, value in sorted(metrics.items()):
            if name.endswith("_stderr") or value is None:
                continue
            stderr = metrics.get(f"{name}_stderr")
            rows.append(
                {
                    "step": data["step"],
                    "task": task,
                    "metric": name,
                    "value": float(value),
                    "stderr": float(stderr)
                    if isinstance(stderr, (int, float)) and math.isfinite(stderr)
                    else None,
                    "n_shot": entry.get("n_shot"),
                }
            )
    return rows
