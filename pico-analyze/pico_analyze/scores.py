"""Loss in context: the run's training log, held-out evaluation and benchmark scores as rows.

Reads, through ``pico_format`` only, a pico run directory's ``log.jsonl`` (training loss and
tokens seen per step), each checkpoint's ``eval.json`` (held-out loss and perplexity) and, when
present, each checkpoint's ``benchmarks.json`` (lm-eval scores, schema below); writes nothing.
Produces table rows shaped like the metric rows (``layer`` -1: the whole model), so the results
table, the plots and the report treat them like any metric:

    metric           kind        split  value
    train_loss       loss        train  the training loss logged at the checkpoint's step: the
                                        mean next-token loss of the batch of that optimizer step
                                        (weights of the step before); step 0 has none
    eval_loss        loss        eval   mean next-token loss on the held-out batch (eval.json)
    eval_perplexity  loss        eval   exp(eval_loss)
    TASK/METRIC      benchmark   -      e.g. ``hellaswag/acc``; module = the task;
                                        ``*_stderr`` entries are rows too

benchmarks.json is read with :func:`pico_format.read_benchmarks` (its schema is documented in
``pico_format.benchmarks``).

:func:`tokens_seen` maps each step to the tokens trained on before it (from the log, else
step x global batch x sequence length from the run's config) for the table's ``tokens_seen``.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pico_analyze.table import (
    BENCHMARK_KIND,
    EVAL_LOSS,
    EVAL_PPL,
    LOSS_KIND,
    MODEL_LAYER,
    TRAIN_LOSS,
    Row,
)
from pico_format import RunPaths, benchmark_rows, read_benchmarks, read_json, read_log


def run_root(source) -> Path | None:
    """The local folder of a pico run behind a source (ours, or a Hub copy of ours), or None."""
    root = getattr(source, "root", None)
    if root is None:
        return None
    run = RunPaths(root)
    return run.root if run.info.is_file() or run.log.is_file() else None


def _row(run: str, step: int, metric: str, kind: str, split, module: str, value, note="") -> Row:
    value = float(value) if isinstance(value, (int, float)) else math.nan
    if not note and not math.isfinite(value):
        note = "non-finite value"
    return Row(
        run=run,
        step=step,
        split=split,
        component="model",
        kind=kind,
        module=module,
        layer=MODEL_LAYER,
        head=None,
        metric=metric,
        function=metric,
        reference_step=None,
        reference_run=None,
        value=value,
        note=note,
    )


def score_rows(source, steps: list[int]) -> tuple[list[Row], list[str]]:
    """(rows, notes) for the checkpoints `steps` of `source`; notes say what is unavailable."""
    root = run_root(source)
    if root is None:
        return [], [
            f"run '{source.name}': no training log or eval.json (not a pico run directory); "
            f"loss rows omitted."
        ]
    run, name, rows, notes = RunPaths(root), source.name, [], []
    losses = {r["step"]: r["loss"] for r in read_log(run.log) if "loss" in r and "step" in r}
    if not losses:
        notes.append(f"run '{name}': no training log ({run.log.name}); train_loss omitted.")
    missing_eval = []
    for step in steps:
        if step in losses:
            rows.append(_row(name, step, TRAIN_LOSS, LOSS_KIND, "train", "model", losses[step]))
        ckpt = run.checkpoint(step)
        if ckpt.eval.is_file():
            ev = read_json(ckpt.eval)
            if "eval_loss" in ev:
                rows.append(
                    _row(name, step, EVAL_LOSS, LOSS_KIND, "eval", "model", ev["eval_loss"])
                )
                ppl = ev.get("eval_perplexity", math.exp(min(ev["eval_loss"], 700.0)))
                rows.append(_row(name, step, EVAL_PPL, LOSS_KIND, "eval", "model", ppl))
        else:
            missing_eval.append(step)
        bench = read_benchmarks(ckpt)
        for b in benchmark_rows(bench) if bench else []:
            for metric, value in (
                (b["metric"], b["value"]),
                (f"{b['metric']}_stderr", b["stderr"]),
            ):
                if value is not None:
                    task = b["task"]
                    rows.append(
                        _row(name, step, f"{task}/{metric}", BENCHMARK_KIND, None, task, value)
                    )
    if missing_eval and len(missing_eval) < len(steps):
        notes.append(f"run '{name}': no eval.json at steps {missing_eval}.")
    elif missing_eval:
        notes.append(f"run '{name}': no held-out evaluation (eval.json) at any checkpoint.")
    return rows, notes


def tokens_seen(source, steps: list[int]) -> dict[int, int]:
    """{step: tokens trained on before the checkpoint} where known (log, else config)."""
    root = run_root(source)
    if root is None:
        return {}
    log = read_log(RunPaths(root).log)
    logged = {r["step"]: r["tokens_seen"] for r in log if "tokens_seen" in r}
    out = {s: int(logged[s]) for s in steps if s in logged}
    if 0 in steps:
        out[0] = 0
    config_path = RunPaths(root).config
    if len(out) < len(steps) and config_path.is_file():
        try:
            c = yaml.safe_load(config_path.read_text()) or {}
            seq = c.get("data", {}).get("seq_len") or c.get("model", {}).get("max_seq_len")
            per_step = int(c["training"]["global_batch_size"]) * int(seq)
        except (KeyError, TypeError, ValueError, yaml.YAMLError):
            return out
        out.update({s: s * per_step for s in steps if s not in out})
    return out
