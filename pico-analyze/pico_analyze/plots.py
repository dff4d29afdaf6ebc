"""Plots of the results table (matplotlib, Agg; no display needed).

Reads :class:`~pico_analyze.runner.Row` objects and writes PNGs into ``OUT/plots/``:

* ``run``: per metric label, ``LABEL.png`` (value against step, one line per layer, a panel per
  component/module/split) and ``LABEL_heatmap.png`` (layer x step).
* ``compare``: per metric label, ``LABEL.png`` with the runs overlaid (mean over layers, band =
  min..max over layers), and per cross-run similarity label, ``LABEL.png`` (one line per layer and
  run) and ``LABEL_heatmap.png``.

Per-head components are averaged over heads in the plots (the table keeps every head).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from pico_analyze.table import Row

PLOTS_DIR = "plots"
PANEL_W, PANEL_H, MAX_COLS, DPI = 4.6, 3.3, 3, 90


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=@-]+", "_", label).strip("_") or "metric"


def _group(row: Row) -> tuple:
    return (row.component, row.kind, row.module, row.split)


def _title(group: tuple) -> str:
    component, kind, module, split = group
    text = f"{kind} {module}" + (f" [{split}]" if split else "")
    if component != "simple":
        text += " (mean over heads)" if not component.endswith("_concat") else " (heads concat)"
    return text


def _cross(row: Row) -> bool:
    return row.cross_run


def _by_label(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if math.isfinite(r.value):
            out[r.metric].append(r)
    return out


def _series(rows: list[Row], key) -> dict:
    """key(row) -> {step: mean value over the rows (heads) sharing key and step}."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[key(r)][r.step].append(r.value)
    return {k: {s: float(np.mean(v)) for s, v in sorted(d.items())} for k, d in acc.items()}


def _figure(n: int) -> tuple[Figure, list]:
    cols = min(MAX_COLS, n)
    rows = math.ceil(n / cols)
    # Fixed margins: constrained layout costs a second full draw per figure.
    width, height = PANEL_W * cols, PANEL_H * rows + 0.5
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=0.9 / width,
        right=1 - 0.25 / width,
        bottom=0.6 / height,
        top=1 - 0.75 / height,
        wspace=0.45,
        hspace=0.6,
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _layer_lines(ax, rows: list[Row], runs: list[str] | None = None) -> None:
    styles = ["-", "--", ":", "-."]
    layers = sorted({r.layer for r in rows})
    cmap = colormaps["viridis"]
    series = _series(rows, lambda r: (r.run, r.layer))
    for (run, layer), pts in sorted(series.items()):
        color = cmap(layers.index(layer) / max(1, len(layers) - 1))
        style = styles[runs.index(run) % len(styles)] if runs else "-"
        label = f"L{layer}" + (f" {run}" if runs and len(runs) > 1 else "")
        ax.plot(list(pts), list(pts.values()), style, color=color, marker=".", label=label)
    if len(series) <= 12:
        ax.legend(fontsize=7)


def _heatmap(fig: Figure, ax, rows: list[Row]) -> None:
    steps = sorted({r.step for r in rows})
    layers = sorted({r.layer for r in rows})
    grid = np.full((len(layers), len(steps)), np.nan)
    for (layer, step), v in _series(rows, lambda r: (r.layer, r.step)).items():
        grid[layers.index(layer), steps.index(step)] = next(iter(v.values()))
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
    )
    stride = max(1, len(steps) // 8)
    ax.set_xticks(range(0, len(steps), stride), [str(s) for s in steps[::stride]], fontsize=7)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax)


def _grouped(rows: list[Row]) -> dict[tuple, list[Row]]:
    """Rows of one metric label split into panels (kind, component, module, split)."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[_group(r)].append(r)
    return groups


def plot_run(rows: list[Row], out_dir: Path) -> list[Path]:
    """Per metric label: lines per layer over steps, and a layer x step heatmap."""
    written = []
    for label, lrows in _by_label([r for r in rows if not _cross(r)]).items():
        groups = _grouped(lrows)
        fig, axes = _figure(len(groups))
        for ax, (group, grows) in zip(axes, groups.items()):
            _layer_lines(ax, grows)
            ax.set_title(_title(group), fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(label, fontsize=8)
        fig.suptitle(label)
        written.append(_save(fig, out_dir / PLOTS_DIR / f"{safe_name(label)}.png"))
        fig, axes = _figure(len(groups))
        for ax, (group, grows) in zip(axes, groups.items()):
            _heatmap(fig, ax, grows)
            ax.set_title(_title(group), fontsize=9)
        fig.suptitle(f"{label} (layer x step)")
        written.append(_save(fig, out_dir / PLOTS_DIR / f"{safe_name(label)}_heatmap.png"))
    return written


def plot_compare(rows: list[Row], out_dir: Path) -> list[Path]:
    """Runs overlaid per metric label; cross-run similarity per layer over steps."""
    written = []
    runs = list(dict.fromkeys(r.run for r in rows))
    cmap = colormaps["tab10"]
    for label, lrows in _by_label([r for r in rows if not _cross(r)]).items():
        groups = _grouped(lrows)
        fig, axes = _figure(len(groups))
        for ax, (group, grows) in zip(axes, groups.items()):
            per_layer = _series(grows, lambda r: (r.run, r.layer))
            for i, run in enumerate(runs):
                lines = [v for (rn, _), v in per_layer.items() if rn == run]
                steps = sorted({s for line in lines for s in line})
                if not steps:
                    continue
                vals = np.array([[line.get(s, np.nan) for s in steps] for line in lines])
                color = cmap(i % 10)
                ax.plot(steps, np.nanmean(vals, 0), color=color, marker=".", label=run)
                ax.fill_between(
                    steps, np.nanmin(vals, 0), np.nanmax(vals, 0), color=color, alpha=0.15
                )
            ax.set_title(_title(group), fontsize=9)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.suptitle(f"{label}: runs overlaid (line: mean over layers, band: min..max)")
        written.append(_save(fig, out_dir / PLOTS_DIR / f"{safe_name(label)}.png"))
    for label, lrows in _by_label([r for r in rows if _cross(r)]).items():
        groups = defaultdict(list)
        for r in lrows:
            groups[_group(r)].append(r)
        fig, axes = _figure(len(groups))
        others = list(dict.fromkeys(r.run for r in lrows))
        for ax, (group, grows) in zip(axes, groups.items()):
            _layer_lines(ax, grows, others)
            ax.set_title(_title(group), fontsize=9)
            ax.set_xlabel("step")
        fig.suptitle(f"{label}: similarity to {lrows[0].reference_run}")
        written.append(_save(fig, out_dir / PLOTS_DIR / f"{safe_name(label)}.png"))
        panels = [(g, run) for g in groups for run in others]
        fig, axes = _figure(len(panels))
        for ax, (group, run) in zip(axes, panels):
            _heatmap(fig, ax, [r for r in groups[group] if r.run == run])
            ax.set_title(f"{run}: {_title(group)}", fontsize=9)
        fig.suptitle(f"{label} (layer x step)")
        written.append(_save(fig, out_dir / PLOTS_DIR / f"{safe_name(label)}_heatmap.png"))
    return written
