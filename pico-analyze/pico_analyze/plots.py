"""Plots of the results table and the training log (matplotlib ``Figure`` objects, Agg).

Reads table rows, the runs' training logs and the layer-similarity pairs; writes figures into a
fresh ``OUT/plots/`` (emptied first), each in every format of ``figures.formats`` (PNG, PDF,
SVG) at ``figures.dpi``:

* ``run``: ``loss`` (training loss over every logged step, smoothed, with the held-out loss at
  the checkpoints); per metric label ``LABEL`` (value against step, one line per layer, a panel
  per component/module/split) and ``LABEL_heatmap`` (layer x checkpoint, when there are several
  layers); ``layer_cka_MODULE`` (see :mod:`pico_analyze.plots_layers`).
* ``compare``: ``loss`` with the runs overlaid; per metric label ``LABEL`` with the runs overlaid
  (line: mean over layers, band: min..max over layers); per cross-run similarity label ``LABEL``
  (one line per layer and run, the grey band: the permutation null of CKA for unrelated inputs)
  and ``LABEL_heatmap``; the cross-run ``layer_cka_MODULE`` matrices.

The x axis is the training step or the tokens seen (``figures.x_axis``), symlog when the
checkpoints are log-spaced; the y axis is logarithmic when a metric spans two decades or more.
``@previous`` metrics can be divided by the step gap (``figures.normalize_previous``) so that
uneven checkpoint spacing does not show as a change of rate. Per-head components are averaged
over heads in the plots (the table keeps every head).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib import colormaps

from pico_analyze import figure_style as fs
from pico_analyze.figure_options import FiguresConfig
from pico_analyze.plots_layers import layer_matrix_jobs
from pico_analyze.table import EVAL_LOSS, LOSS_KIND, Row

RUN_COLORS = colormaps["tab10"]


def _finite(rows: list[Row]) -> list[Row]:
    return [r for r in rows if math.isfinite(r.value)]


def per_step_rows(rows: list[Row]) -> list[Row]:
    """@previous rows of change metrics (not similarities: a cosine or CKA per step means
    nothing) divided by the step gap to their reference: change per training step."""
    out = []
    for r in rows:
        if fs.per_step(r) and r.reference_step is not None and not r.cross_run:
            gap = r.step - r.reference_step
            if gap > 0:
                r = replace(r, value=r.value / gap)
        out.append(r)
    return out


def _by_label(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in _finite(rows):
        out[r.metric].append(r)
    return out


def _grouped(rows: list[Row]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[fs.group_key(r)].append(r)
    return groups


def _series(rows: list[Row], key, opts: FiguresConfig) -> dict:
    """key(row) -> {x: mean value over the rows (heads) sharing key and x}, x ascending."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[key(r)][fs.x_of(r, opts)].append(r.value)
    return {k: {x: float(np.mean(v)) for x, v in sorted(d.items())} for k, d in acc.items()}


def _y_label(rows: list[Row], opts: FiguresConfig) -> str:
    name = fs.metric_name(rows[0])
    return name + (" per step" if opts.normalize_previous and fs.per_step(rows[0]) else "")


def _layer_name(layer: int) -> str:
    return "model" if layer < 0 else f"layer {layer}"


def _layer_lines(
    ax, rows: list[Row], opts: FiguresConfig, runs: list[str] | None = None, legend: bool = True
):
    styles = ["-", "--", ":", "-."]
    layers = sorted({r.layer for r in rows})
    cmap = colormaps["viridis"]
    series = _series(rows, lambda r: (r.run, r.layer), opts)
    for (run, layer), pts in sorted(series.items()):
        color = cmap(layers.index(layer) / max(1, len(layers) - 1) * 0.9)
        style = styles[runs.index(run) % len(styles)] if runs else "-"
        label = _layer_name(layer) + (f", {run}" if runs and len(runs) > 1 else "")
        ax.plot(list(pts), list(pts.values()), style, color=color, marker=".", ms=4, label=label)
    if legend and 1 < len(series) <= 12:
        ax.legend(fontsize=6, ncol=2 if len(series) > 6 else 1)
    return [x for pts in series.values() for x in pts], [
        v for p in series.values() for v in p.values()
    ]


def _heatmap_axes(rows: list[Row], opts: FiguresConfig) -> tuple[list[float], list[int]]:
    """The checkpoints (x values) and layers of a heatmap panel, ascending."""
    return sorted({fs.x_of(r, opts) for r in rows}), sorted({r.layer for r in rows})


def _heatmap(ax, rows: list[Row], opts: FiguresConfig, label: str, outer=(True, True)) -> None:
    """Layer x checkpoint grid (columns are checkpoints in order, labelled by step/tokens).
    `outer` (bottom, left): whether this panel carries the x and y ticks and labels (False
    where the panel below or to the left has the same axes and carries them)."""
    xs, layers = _heatmap_axes(rows, opts)
    grid = np.full((len(layers), len(xs)), np.nan)
    for (layer, x), v in _series(rows, lambda r: (r.layer, fs.x_of(r, opts)), opts).items():
        grid[layers.index(layer), xs.index(x)] = next(iter(v.values()))
    vals = grid[np.isfinite(grid)]
    log = fs.spans_decades(vals.tolist())
    from matplotlib.colors import LogNorm

    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
        norm=LogNorm() if log else None,
    )
    bottom, left = outer
    if bottom:
        stride = max(1, math.ceil(len(xs) / 8))
        fmt = fs.count_text if opts.x_axis == "tokens" else (lambda x: str(int(x)))
        ax.set_xticks(range(0, len(xs), stride), [fmt(x) for x in xs[::stride]], fontsize=7)
        ax.set_xlabel(f"checkpoint ({fs.x_label(opts)})", fontsize=8)
    else:
        ax.set_xticks([])
    if left:
        ystride = max(1, math.ceil(len(layers) / 6))  # every tick is an artist: few of them
        ax.set_yticks(
            range(0, len(layers), ystride), [str(x) for x in layers[::ystride]], fontsize=7
        )
        ax.set_ylabel("layer", fontsize=8)
    else:
        ax.set_yticks([])
    fs.colorbar(image, ax, label, log)


def _heatmap_panels(axes, panels: list[list[Row]], opts: FiguresConfig, label: str) -> None:
    """A heatmap per panel; when every panel has the same checkpoints and layers, only the
    bottom panel of each column and the first of each row carry ticks and axis labels."""
    shared = len({repr(_heatmap_axes(p, opts)) for p in panels}) == 1
    for i, (ax, prows) in enumerate(zip(axes, panels)):
        where = fs.outer(i, len(panels)) if shared else (True, True)
        _heatmap(ax, prows, opts, label, where)


def _metric_figures(folder, label, lrows, opts, run_name: str | None) -> list[Path]:
    """One run's metric label, one figure: a panel per component/module/split showing one line
    per layer, or a layer x checkpoint heatmap when there are many layers."""
    groups = list(_grouped(lrows).values())
    name, ref = _y_label(lrows, opts), fs.reference_text(lrows)
    title = f"{name} {ref}".strip() + (f", run {run_name}" if run_name else "")
    heat = [len({r.layer for r in g}) >= fs.HEATMAP_FROM_LAYERS for g in groups]
    fig, axes = fs.figure(len(groups), colorbars=any(heat))
    if all(heat):
        _heatmap_panels(axes, groups, opts, name)
    for ax, grows, is_heat in zip(axes, groups, heat):
        if is_heat and not all(heat):
            _heatmap(ax, grows, opts, name)
        elif not is_heat:
            if any(heat):  # a figure made for heatmaps: style this panel of lines
                fs.line_panel(ax)
            xs, ys = _layer_lines(ax, grows, opts)
            fs.set_x_scale(ax, xs, opts)
            fs.set_y_scale(ax, ys)
            ax.set_ylabel(name, fontsize=8)
        ax.set_title(fs.panel_title(grows[0]), fontsize=8, y=1.0, pad=4)
    fig.suptitle(title, fontsize=10)
    return fs.save(fig, folder, label, opts)


def _smooth(values: np.ndarray) -> np.ndarray:
    """Exponential moving average with a span of ~2% of the points (at least 1)."""
    alpha = min(1.0, 2.0 / (max(1, len(values) // 50) + 1))
    out, acc = np.empty_like(values), values[0]
    for i, v in enumerate(values):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def _loss_figure(folder, rows, logs, opts, runs: list[str]) -> list[Path]:
    """Training loss (every logged step, smoothed) and held-out loss at the checkpoints."""
    evals = [r for r in _finite(rows) if r.function == EVAL_LOSS]
    curves = {run: [r for r in logs.get(run, []) if "loss" in r and "step" in r] for run in runs}
    if not evals and not any(curves.values()):
        return []
    fig, (ax,) = fs.figure(1, w=6.4, h=4.0)
    xs_all, ys_all = [], []
    for i, run in enumerate(runs):
        color = RUN_COLORS(i % 10)
        recs = curves[run]
        if recs:
            key = "tokens_seen" if opts.x_axis == "tokens" else "step"
            xs = np.array([r.get(key, r["step"]) for r in recs], float)
            ys = np.array([r["loss"] for r in recs], float)
            ok = np.isfinite(ys)
            xs, ys = xs[ok], ys[ok]
            if len(ys):
                ax.plot(xs, ys, color=color, alpha=0.2, linewidth=0.6)
                ax.plot(xs, _smooth(ys), color=color, linewidth=1.3, label=f"{run}: training")
                xs_all += xs.tolist()
                ys_all += ys.tolist()
        ev = sorted((fs.x_of(r, opts), r.value) for r in evals if r.run == run)
        if ev:
            ax.plot(*zip(*ev), "o--", color=color, ms=3.5, linewidth=0.9, label=f"{run}: held-out")
            xs_all += [x for x, _ in ev]
            ys_all += [y for _, y in ev]
    # The checkpoints decide the scale, as in every metric figure (the log is evenly spaced).
    checkpoints = sorted({fs.x_of(r, opts) for r in rows})
    fs.set_x_scale(ax, checkpoints or xs_all, opts)
    fs.set_y_scale(ax, ys_all)
    ax.set_ylabel("next-token loss (nats)", fontsize=8)
    ax.legend(fontsize=7)
    who = f"run {runs[0]}" if len(runs) == 1 else "runs overlaid"
    ax.set_title(
        "training loss (thin: per step; thick: smoothed) and held-out loss",
        fontsize=8,
        y=1.0,
        pad=4,
    )
    fig.suptitle(f"Loss, {who}", fontsize=10)
    return fs.save(fig, folder, "loss", opts)


def _overlaid(folder, label, lrows, runs, opts) -> list[Path]:
    groups = _grouped(lrows)
    name = _y_label(lrows, opts)
    fig, axes = fs.figure(len(groups))
    for ax, grows in zip(axes, groups.values()):
        per_layer = _series(grows, lambda r: (r.run, r.layer), opts)
        xs_all, ys_all = [], []
        for i, run in enumerate(runs):
            lines = [v for (rn, _), v in per_layer.items() if rn == run]
            xs = sorted({x for line in lines for x in line})
            if not xs:
                continue
            vals = np.array([[line.get(x, np.nan) for x in xs] for line in lines])
            color = RUN_COLORS(i % 10)
            ax.plot(xs, np.nanmean(vals, 0), color=color, marker=".", ms=4, label=run)
            if len(lines) > 1:
                ax.fill_between(xs, np.nanmin(vals, 0), np.nanmax(vals, 0), color=color, alpha=0.15)
            xs_all += xs
            ys_all += vals[np.isfinite(vals)].tolist()
        fs.set_x_scale(ax, xs_all, opts)
        fs.set_y_scale(ax, ys_all)
        ax.set_title(fs.panel_title(grows[0]), fontsize=8, y=1.0, pad=4)
        ax.set_ylabel(name, fontsize=8)
        if ax is axes[0]:
            ax.legend(fontsize=6)
    ref = fs.reference_text(lrows)
    fig.suptitle(
        f"{name} {ref}".strip() + ": runs overlaid (line: mean over layers; band: min..max)",
        fontsize=10,
    )
    return fs.save(fig, folder, label, opts)


def _null_band(ax, pairs, runs: list[str], module: str, steps_x: dict[int, float]) -> None:
    """Grey band: the permutation null (2.5..97.5%) of same-index cross-run CKA, mean over
    layers and runs, at each step where it was computed."""
    acc: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for p in pairs:
        if p.run_b in runs and not p.within and p.module == module and p.layer_a == p.layer_b:
            if math.isfinite(p.null_low) and math.isfinite(p.null_high):
                acc[p.step].append((p.null_low, p.null_high))
    pts = sorted(
        (steps_x.get(s, s), np.mean([a for a, _ in v]), np.mean([b for _, b in v]))
        for s, v in acc.items()
    )
    if pts:
        x, lo, hi = zip(*pts)
        ax.fill_between(x, lo, hi, color="0.5", alpha=0.3, label="CKA of unrelated inputs (null)")


def _cross_figure(folder, label, lrows, pairs, opts) -> list[Path]:
    """Cross-run similarity of one label: per layer over steps over the permutation null band,
    or layer x checkpoint heatmaps per run when there are many layers."""
    groups = _grouped(lrows)
    others = list(dict.fromkeys(r.run for r in lrows))
    name, ref = _y_label(lrows, opts), fs.reference_text(lrows)
    many = any(len({r.layer for r in g}) >= fs.HEATMAP_FROM_LAYERS for g in groups.values())
    if not many:
        n_lines = len({(r.run, r.layer) for r in lrows}) + 1
        fig, axes = fs.figure(len(groups), legend_rows=fs.legend_rows(n_lines))
        for ax, grows in zip(axes, groups.values()):
            steps_x = {r.step: fs.x_of(r, opts) for r in grows}
            if lrows[0].function == "cka":
                _null_band(ax, pairs, others, grows[0].module, steps_x)
            xs, _ = _layer_lines(ax, grows, opts, others, legend=False)
            fs.set_x_scale(ax, xs, opts)
            ax.set_title(fs.panel_title(grows[0]), fontsize=8, y=1.0, pad=4)
            ax.set_ylabel(name, fontsize=8)
        fs.figure_legend(fig, axes[0])
        fig.suptitle(f"{name} {ref}".strip(), fontsize=10)
    else:
        panels = [(g, run) for g in groups for run in others]
        fig, axes = fs.figure(len(panels), colorbars=True)
        prows = [[r for r in groups[group] if r.run == run] for group, run in panels]
        _heatmap_panels(axes, prows, opts, name)
        for ax, (group, run) in zip(axes, panels):
            title = f"run {run}: {fs.panel_title(groups[group][0])}"
            ax.set_title(title, fontsize=8, y=1.0, pad=4)
        fig.suptitle(f"{name} {ref}: layer x checkpoint", fontsize=10)
    return fs.save(fig, folder, label, opts)


def plot_figures(
    rows: list[Row],
    out_dir: Path,
    opts: FiguresConfig | None = None,
    logs: dict[str, list[dict]] | None = None,
    pairs: list | None = None,
    *,
    compare: bool = False,
) -> list[Path]:
    """Every figure of one run's analysis, or of a comparison (`compare`: runs overlaid and the
    cross-run similarity figures), into a fresh OUT/plots; returns the files written."""
    return start_figures(rows, out_dir, opts, logs, pairs, compare=compare).paths()


def start_figures(
    rows: list[Row],
    out_dir: Path,
    opts: FiguresConfig | None = None,
    logs: dict[str, list[dict]] | None = None,
    pairs: list | None = None,
    *,
    compare: bool = False,
    layer_figures_later: int = 0,
) -> fs.Rendering:
    """:func:`plot_figures`, started: the figures are drawn in worker processes where that
    helps while the caller goes on; the returned object's ``paths()`` waits for them.
    `layer_figures_later`: the layer x layer CKA figures (that many) come later, from
    :func:`add_layer_figures` (the pairs are being computed meanwhile); `pairs` is then
    ignored."""
    opts = opts or FiguresConfig()
    pairs = [] if layer_figures_later else (pairs or [])
    folder = fs.fresh_dir(out_dir)
    rows = per_step_rows(rows) if opts.normalize_previous else rows
    runs = list(dict.fromkeys(r.run for r in rows))
    if not compare:
        runs = runs[:1]
    jobs = [(_loss_figure, (folder, rows, logs or {}, opts, runs))]
    plain = [r for r in rows if not fs.is_cross(r) and r.kind != LOSS_KIND]
    for label, lrows in _by_label(plain).items():
        if compare:
            jobs.append((_overlaid, (folder, label, lrows, runs, opts)))
        else:
            jobs.append((_metric_figures, (folder, label, lrows, opts, runs[0])))
    if compare:
        for label, lrows in _by_label([r for r in rows if fs.is_cross(r)]).items():
            jobs.append((_cross_figure, (folder, label, lrows, pairs, opts)))
    jobs += layer_matrix_jobs(pairs, folder, opts)
    return fs.start(jobs, more=layer_figures_later, weights=[_panels(job) for job in jobs])


def _panels(job: tuple) -> int:
    """A figure job's panel count, its expected drawing cost (figure_style.start)."""
    fn, args = job
    if fn in (_metric_figures, _overlaid, _cross_figure):  # args: (folder, label, rows, ...)
        return len({fs.group_key(r) for r in args[2]})
    return 1


def add_layer_figures(
    drawing: fs.Rendering, pairs: list, out_dir: Path, opts: FiguresConfig | None = None
) -> None:
    """The layer x layer CKA figures of `pairs`, added to a drawing started with
    ``layer_figures_later`` (:func:`start_figures`)."""
    drawing.add(layer_matrix_jobs(pairs, out_dir / fs.PLOTS_DIR, opts or FiguresConfig()))


__all__ = ["add_layer_figures", "plot_figures", "start_figures", "per_step_rows"]
