"""Reports: a short text summary, the notes in the log, report.md/.html, optional W&B logging.

Reads the rows and paths of a finished analysis; writes ``summary.txt`` (through the caller),
log lines for values that could not be measured, and, when enabled, a W&B run (wandb is imported
only then).
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from pico_analyze.result import AnalysisResult
from pico_analyze.table import COLUMNS, Row

if TYPE_CHECKING:
    from pico_analyze.config import WandbConfig


log = logging.getLogger("pico_analyze")
MAX_HIGHLIGHTS, MAX_NOTE_LINES = 12, 20


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "nan"


def _where(r: Row) -> str:
    split = f" [{r.split}]" if r.split else ""
    if r.component == "model":  # loss and benchmark rows (pico_analyze.scores)
        return f"{r.kind} {r.module if r.kind == 'benchmark' else 'whole model'}{split}"
    return f"{r.kind} {r.module}{split}" + ("" if r.component == "simple" else f" {r.component}")


def note_groups(rows: list[Row]) -> list[tuple[str, int]]:
    """(message, count) for the values that carry a note, most frequent first."""
    counts = Counter(f"{r.metric} {_where(r)}: {r.note}" for r in rows if r.note)
    return counts.most_common()


def log_notes(rows: list[Row]) -> None:
    """Report every kind of note once in the log (with how many values it concerns)."""
    groups = note_groups(rows)
    for message, count in groups[:MAX_NOTE_LINES]:
        log.warning("%s (%d value%s)", message, count, "" if count == 1 else "s")
    if len(groups) > MAX_NOTE_LINES:
        log.warning(
            "... %d more kinds of notes: see the `note` column of the table.",
            len(groups) - MAX_NOTE_LINES,
        )


def highlights(rows: list[Row], show_run: bool = False) -> list[str]:
    """Per metric label (its first group): mean over layers and heads at the first and last
    step. Loss rows come first; with several runs, the same labels for every run (fewer of them,
    so the summary stays short)."""
    acc: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if math.isfinite(r.value):
            acc[(r.run, r.metric, _where(r))][r.step].append(r.value)
    runs = list(dict.fromkeys(run for run, _, _ in acc))
    labels = list(dict.fromkeys(label for _, label, _ in acc))
    labels.sort(key=lambda label: label not in ("train_loss", "eval_loss"))
    labels = labels[: max(3, MAX_HIGHLIGHTS // max(1, len(runs)))]
    lines, seen = [], set()
    for label in labels:
        for (run, lab, where), by_step in acc.items():
            if lab != label or (run, label) in seen:  # one line per label and run
                continue
            seen.add((run, label))
            steps = sorted(by_step)
            first, last = (sum(by_step[s]) / len(by_step[s]) for s in (steps[0], steps[-1]))
            lines.append(
                f"  {label:<34} {where}: step {steps[0]} {_fmt(first)} -> "
                f"step {steps[-1]} {_fmt(last)}" + (f"  ({run})" if show_run else "")
            )
    return lines


def summarize(result: AnalysisResult) -> str:
    rows = result.rows
    bad = sum(1 for r in rows if not math.isfinite(r.value))
    what = (
        f"run '{result.runs[0]}'"
        if len(result.runs) == 1
        else f"{len(result.runs)} runs ({', '.join(result.runs)})"
    )
    steps = sorted({s for st in result.steps.values() for s in st})
    span = f"steps {steps[0]}..{steps[-1]}" if steps else "no steps"
    out = [
        f"Analysed {what}: {len(steps)} checkpoints ({span}), {len(rows)} values "
        f"({bad} not measurable) in {result.seconds:.1f} s."
    ]
    extra = [p.name for p in result.table_paths[1:]]
    out.append(f"Table: {result.table_path}" + (f" (+ {', '.join(extra)})" if extra else ""))
    if result.plots:
        folder = result.plots[0].parent
        names = ", ".join(p.name for p in result.plots)
        out.append(f"Plots ({len(result.plots)}) in {folder}: {names}")
    many = len(result.runs) > 1
    lines = highlights([r for r in rows if not r.cross_run], many)
    cross = highlights([r for r in rows if r.cross_run], many)
    if lines:
        out.append("Mean over layers (and heads), first -> last checkpoint:")
        out += lines
    if cross:
        out.append("Across runs:")
        out += cross
    groups = note_groups(rows)
    if groups:
        out.append(
            f"Notes: {sum(c for _, c in groups)} values carry a note "
            f"({len(groups)} kinds; see the `note` column), e.g.:"
        )
        out += [f"  {textwrap.shorten(m, 240, placeholder=' ...')} (x{c})" for m, c in groups[:3]]
    for line in result.warnings:
        out.append(f"Warning: {line}")
    if result.report_paths:
        out.append(f"Report: {', '.join(str(p) for p in result.report_paths)}")
    return "\n".join(out)


def log_wandb(result: AnalysisResult, cfg: WandbConfig, config: dict) -> None:
    """Log the values (per step), the table and the plots to Weights & Biases."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError(
            "wandb logging is enabled but wandb is not installed: "
            "pip install 'pico-analyze[wandb]'."
        ) from None
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=cfg.name or "+".join(result.runs),
        config=config,
    )
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in result.rows:
        if math.isfinite(r.value):
            key = "/".join(
                str(x)
                for x in (
                    r.run,
                    r.metric,
                    r.component,
                    r.module,
                    r.split or "weights",
                    f"layer{r.layer}",
                )
            )
            acc[(r.step, key)].append(r.value)
    for (step, key), vals in acc.items():
        by_step[step][key] = sum(vals) / len(vals)
    for step in sorted(by_step):
        run.log(by_step[step], step=step)
    columns = COLUMNS
    run.log(
        {
            "results": wandb.Table(
                columns=columns, data=[[getattr(r, c) for c in columns] for r in result.rows]
            )
        }
    )
    run.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in result.plots})
    run.finish()
