"""What the figures say: metric full names, panel titles, axis scales, and how files are saved.

Reads table rows and the figure options
(:class:`~pico_analyze.figure_options.FiguresConfig`); writes nothing itself. Shared by
:mod:`pico_analyze.plots` and :mod:`pico_analyze.plots_layers` so that every figure names
things the same way: the metric's full name (with its settings and what it
is compared with), the component, module and split, the run.

Matplotlib is used through ``Figure`` objects only (the Agg canvas, no pyplot state), so figures
can be drawn in any thread or process, with no display.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pico_analyze.figure_options import FiguresConfig
from pico_analyze.forking import collector_paused, frozen_objects
from pico_analyze.table import Row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib (~0.4 s to import) is imported by the functions that draw, so the naming helpers
# here (used by the report) do not load it in an analysis without figures.

PLOTS_DIR = "plots"
HEATMAP_FROM_LAYERS = 7  # a metric over more layers than this is drawn as a layer x step heatmap
PANEL_W, PANEL_H, MAX_COLS = 4.4, 3.2, 3

FULL_NAMES = {
    "cka": "linear CKA",
    "svcca": "SVCCA similarity",
    "pwcca": "PWCCA similarity",
    "procrustes": "orthogonal Procrustes distance",
    "effective_rank": "effective rank",
    "proportional_effective_rank": "proportional effective rank",
    "stable_rank": "stable rank",
    "condition_number": "condition number",
    "gini": "Gini index",
    "hoyer": "Hoyer sparsity",
    "frobenius_norm": "Frobenius norm",
    "spectral_norm": "spectral norm",
    "nuclear_norm": "nuclear norm",
    "relative_weight_change": "relative weight change",
    "gradient_cosine_similarity": "gradient cosine similarity",
    "train_loss": "training loss",
    "eval_loss": "held-out loss",
    "eval_perplexity": "held-out perplexity",
}
COMPONENT_NAMES = {
    "ov_circuit": "OV circuit W_O W_V per head (mean over heads)",
    "ov_circuit_concat": "OV circuit, heads concatenated",
    "qk_circuit": "QK circuit W_Q^T W_K per head (mean over heads)",
    "qk_circuit_concat": "QK circuit, heads concatenated",
}


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=@-]+", "_", label).strip("_") or "metric"


def is_cross(row: Row) -> bool:
    return row.cross_run


def is_previous(row: Row) -> bool:
    return row.metric.endswith("@previous")


SIMILARITIES = {"cka", "svcca", "pwcca", "gradient_cosine_similarity"}


def per_step(row: Row) -> bool:
    """Whether figures.normalize_previous divides this row by its step gap: @previous change
    metrics (relative weight change, Procrustes distance), not similarities."""
    return is_previous(row) and row.function not in SIMILARITIES


def metric_name(row: Row) -> str:
    """Full name of the row's metric with its settings: 'linear CKA [debiased=False]'."""
    name = FULL_NAMES.get(row.function, row.function.replace("_", " "))
    settings = re.search(r"\[(.*?)\]", row.metric)
    if row.function == "cka" and not (settings and "debiased=False" in settings.group(1)):
        name += " (debiased)"
    return name + (f" [{settings.group(1)}]" if settings else "")


def reference_text(rows: list[Row]) -> str:
    """What a comparative metric compares with, in words ('' for single-input metrics)."""
    refs = sorted({r.reference for r in rows if r.reference})
    if not refs:
        return ""
    if all(is_previous(r) for r in rows):
        return "vs the previous checkpoint"
    if refs[0].startswith("run "):
        return f"vs run {refs[0].removeprefix('run ')} (same layer, same step)"
    target = rows[0].metric.rsplit("@", 1)[-1] if "@" in rows[0].metric else ""
    steps = ", ".join(r.removeprefix("step ") for r in refs)
    return f"vs step {steps}" + (f" ({target})" if target and not target.isdigit() else "")


def panel_title(row: Row) -> str:
    """Component, module and split of a panel, in words."""
    split = f" ({row.split} batch)" if row.split else ""
    if row.kind == "benchmark":
        return f"benchmark {row.module}"
    if row.component == "model":
        return f"whole model{split}"
    if row.component in COMPONENT_NAMES:
        return f"{COMPONENT_NAMES[row.component]}, {row.kind}{split}"
    return f"{row.kind} of {row.module}{split}"


def group_key(row: Row) -> tuple:
    return (row.component, row.kind, row.module, row.split)


# ----------------------------------------------------------------------------------------------
# Axes
# ----------------------------------------------------------------------------------------------


def x_of(row: Row, opts: FiguresConfig) -> float:
    if opts.x_axis == "tokens" and row.tokens_seen is not None:
        return float(row.tokens_seen)
    return float(row.step)


def count_text(x: float) -> str:
    """4096 -> '4.1k', 2.6e6 -> '2.6M': token counts on tick labels."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.2g}{unit}"
    return f"{x:g}"


def x_label(opts: FiguresConfig) -> str:
    return "tokens seen" if opts.x_axis == "tokens" else "training step"


def log_spaced(xs) -> bool:
    """True when the positive x values span >= 16x and their gaps vary >= 8x (Pythia-style)."""
    pos = sorted({x for x in xs if x > 0})
    if len(pos) < 4 or pos[-1] / pos[0] < 16:
        return False
    gaps = np.diff(pos)
    return gaps.max() / gaps.min() >= 8


def set_x_scale(ax, xs, opts: FiguresConfig) -> None:
    """Linear or symlog x (symlog keeps step 0 and shows log-spaced early checkpoints)."""
    from matplotlib.ticker import NullLocator

    xs = list(xs)
    scale = opts.step_scale
    if scale == "auto":
        scale = "symlog" if log_spaced(xs) else "linear"
    if scale == "symlog":
        pos = [x for x in xs if x > 0]
        ax.set_xscale("symlog", linthresh=min(pos) if pos else 1.0, linscale=0.4)
        ax.xaxis.set_minor_locator(NullLocator())  # minor ticks cost a draw each, say little
    ax.set_xlabel(x_label(opts) + (" (symlog)" if scale == "symlog" else ""), fontsize=8)


def spans_decades(values, decades: float = 1.5) -> bool:
    """All positive and max/min >= 10**decades (~32x): a log axis reads better."""
    v = [x for x in values if math.isfinite(x)]
    return bool(v) and min(v) > 0 and max(v) / min(v) >= 10**decades


def set_y_scale(ax, values) -> None:
    from matplotlib.ticker import MaxNLocator, NullLocator

    if spans_decades(values):
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.yaxis.set_major_locator(MaxNLocator(5))


# ----------------------------------------------------------------------------------------------
# Figures and files
# ----------------------------------------------------------------------------------------------


def grid_cols(n: int, cols: int = MAX_COLS) -> int:
    """Columns of the panel grid of :func:`figure` for `n` panels."""
    return max(1, min(cols, n))


def outer(i: int, n: int, cols: int = MAX_COLS) -> tuple[bool, bool]:
    """(bottom, left): whether panel `i` of `n` (row-major grid of :func:`figure`) has no
    panel below it, and whether it starts a row. Where every panel has the same axes, only
    these carry tick labels and axis labels (every tick is an artist drawn per panel)."""
    cols = grid_cols(n, cols)
    return i + cols >= n, i % cols == 0


def figure(
    n: int,
    cols: int = MAX_COLS,
    w: float = PANEL_W,
    h: float = PANEL_H,
    legend_rows: int = 0,
    colorbars: bool = False,
):
    """A figure with n panels on a grid; fixed margins (no constrained layout: one draw);
    `legend_rows` reserves room below the panels for a figure legend; `colorbars` room right
    of each panel for its colour bar (:func:`colorbar`)."""
    from matplotlib.figure import Figure

    cols = grid_cols(n, cols)
    rows = math.ceil(n / cols)
    below = 0.65 + 0.17 * legend_rows + (0.15 if legend_rows else 0)
    width, height = w * cols, h * rows + 0.15 + below
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=0.95 / width,
        right=1 - (COLORBAR_ROOM if colorbars else 0.3) / width,
        bottom=below / height,
        top=1 - 0.8 / height,
        wspace=0.45,
        hspace=0.55,
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    if not colorbars:  # heatmaps have no grid, and set their few tick labels' size themselves
        for ax in axes[:n]:
            line_panel(ax)
    return fig, axes[:n]


def line_panel(ax) -> None:
    """The style of a panel of lines: small tick labels, a faint grid."""
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.25, linewidth=0.5)


def figure_legend(fig, ax, n_cols: int = 4) -> None:
    """One legend for the whole figure, below the panels (the entries of `ax`)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=n_cols, fontsize=7, frameon=False)


def legend_rows(n_entries: int, n_cols: int = 4) -> int:
    return math.ceil(n_entries / n_cols)


COLORBAR_ROOM = 1.0  # inches right of a heatmap panel: its colour bar, tick labels and label


def colorbar(image, ax, label: str, log: bool):
    """A labelled colour bar right of `ax`, in the margin :func:`figure` leaves with
    `colorbars=True`, drawn as artists of `ax` (:mod:`pico_analyze.colour_bar`: an Axes per
    bar was ~45% of a heatmap figure's drawing), with few ticks."""
    from pico_analyze.colour_bar import colour_bar

    return colour_bar(ax, image, label, log)


def fresh_dir(out_dir: Path) -> Path:
    """OUT/plots emptied (an earlier analysis's figures never linger) and created."""
    folder = out_dir / PLOTS_DIR
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def save(fig: Figure, folder: Path, stem: str, opts: FiguresConfig) -> list[Path]:
    """Write the figure once per format (PNG first when requested); return the paths."""
    paths = []
    for fmt in opts.formats:
        path = folder / f"{safe_name(stem)}.{fmt}"
        fig.savefig(path, dpi=opts.dpi, format=fmt)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# Drawing several figures
# ----------------------------------------------------------------------------------------------

MAX_FIGURE_WORKERS, FIGURES_PER_WORKER = 4, 3
_JOBS: list[tuple] = []  # the jobs of the current rendering, inherited by forked workers


def _draw(fn, args) -> list[Path]:
    """One figure job with the cyclic garbage collector paused, then one collection: a figure
    is ~10^5 short-lived objects, and the collections they trigger (scanning every live object,
    the table rows included) cost ~20% of the drawing. Collecting once after each job frees
    the figure (its artists form reference cycles) before the next."""
    with collector_paused():
        return fn(*args)


def _run_job(i: int) -> list[Path]:
    fn, args = _JOBS[i]
    return _draw(fn, args)


def figure_workers(n_jobs: int) -> int:
    """Processes worth forking for `n_jobs` figures: one per available core (at most 4), each
    drawing at least 3 figures; 1 where fork is unavailable. Called after the analysis's own
    workers have finished, so the cores are free (never more processes than cores)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_FIGURE_WORKERS, n_jobs // FIGURES_PER_WORKER))


class Rendering:
    """Figure jobs being drawn (see :func:`start`); :meth:`paths` waits for them."""

    def __init__(self, jobs: list[tuple], more: int = 0, weights: list[float] | None = None):
        global _JOBS
        self._jobs, self._pool, self._futures = list(jobs), None, []
        workers = figure_workers(len(jobs) + more)  # `more`: jobs expected later (add)
        if workers <= 1:
            return
        # Imported before forking, so that no worker imports matplotlib itself (~0.3 s each).
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401

        _JOBS = jobs
        with frozen_objects():  # never scanned by the workers (nor copied on write)
            # fork: the workers inherit the rows in memory (nothing is pickled on the way in).
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(workers, mp_context=ctx)
            # The costliest first (weights: e.g. panels per figure), so that the workers end
            # together; the paths stay in job order.
            order = sorted(range(len(jobs)), key=lambda i: -(weights[i] if weights else 0))
            futures = {i: self._pool.submit(_run_job, i) for i in order}
            self._futures = [futures[i] for i in range(len(jobs))]

    def add(self, jobs: list[tuple]) -> None:
        """More figure jobs, drawn after those already started (their arguments are pickled to
        the workers, which were forked before these existed)."""
        if self._pool is None:
            self._jobs += jobs
        else:
            self._futures += [self._pool.submit(_draw, fn, args) for fn, args in jobs]

    def paths(self) -> list[Path]:
        """Every job's paths, in job order (drawn here if no worker was started)."""
        global _JOBS
        if self._pool is None:
            return [p for fn, args in self._jobs for p in _draw(fn, args)]
        try:
            return [p for fut in self._futures for p in fut.result()]
        finally:
            self._pool.shutdown()
            _JOBS = []


def start(jobs: list[tuple], more: int = 0, weights: list[float] | None = None) -> Rendering:
    """Start figure jobs ``(fn, args) -> [paths]``: in forked processes when that helps (each
    figure is its own ``Figure`` object: no shared pyplot state), so the caller can go on (e.g.
    write the tables) while they draw; else they are drawn when their paths are asked for.
    `more`: how many jobs will be added later (:meth:`Rendering.add`), for the worker count;
    `weights`: each job's expected cost (workers take the costliest first)."""
    return Rendering(jobs, more, weights)


def render(jobs: list[tuple]) -> list[Path]:
    """Run figure jobs and return their paths, in job order (see :func:`start`)."""
    return start(jobs).paths()
