"""Heatmaps of layer x layer CKA (:mod:`pico_analyze.layer_similarity`), one figure per module.

Reads :class:`~pico_analyze.layer_pair.LayerPair` records; writes ``layer_cka_MODULE``
figures into the plots folder: a panel per run (within-run matrix at its step) and, in a
comparison, a panel per other run (reference run's layers x that run's layers). Cross-run cells
whose CKA is not above the permutation null (p >= 0.05) are marked with * (or a dot when the
matrix is larger than 8 x 8, where values are not written in the cells).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from pico_analyze import figure_style as fs
from pico_analyze.figure_options import FiguresConfig

ALPHA = 0.05
ANNOTATE_MAX = 8


def _matrices(pairs) -> dict[str, list[tuple[str, list]]]:
    """module -> [(panel title, pairs)] for full matrices (not the same-index-only steps)."""
    panels: dict[tuple, list] = defaultdict(list)
    for p in pairs:
        panels[(p.module, p.run_a, p.run_b, p.step)].append(p)
    out: dict[str, list[tuple[str, list]]] = defaultdict(list)
    for (module, a, b, step), ps in panels.items():
        if a != b and all(p.layer_a == p.layer_b for p in ps):
            continue  # same-index pairs only: drawn as the null band, not as a matrix
        title = f"run {a}, step {step}" if a == b else f"{a} vs {b}, step {step}"
        out[module].append((title, ps))
    runs = list(dict.fromkeys([p.run_a for p in pairs[:1]] + [p.run_b for p in pairs]))
    for panels in out.values():  # within-run matrices first, then across runs; in run order
        panels.sort(key=lambda tp: (tp[1][0].run_a != tp[1][0].run_b, runs.index(tp[1][0].run_b)))
    return out


def _grid(ps) -> tuple[np.ndarray, np.ndarray, int, int]:
    rows = max(p.layer_a for p in ps) + 1
    cols = max(p.layer_b for p in ps) + 1
    value, pval = np.full((rows, cols), np.nan), np.full((rows, cols), np.nan)
    for p in ps:
        value[p.layer_a, p.layer_b], pval[p.layer_a, p.layer_b] = p.cka, p.p_value
        if p.run_a == p.run_b:  # within a run the matrix is symmetric: pairs hold i <= j
            value[p.layer_b, p.layer_a], pval[p.layer_b, p.layer_a] = p.cka, p.p_value
    return value, pval, rows, cols


def layer_matrix_jobs(pairs, folder: Path, opts: FiguresConfig) -> list[tuple]:
    """One figure job per module (see :func:`pico_analyze.figure_style.render`)."""
    return [
        (_module_figure, (module, panels, folder, opts))
        for module, panels in _matrices(pairs).items()
    ]


def plot_layer_matrices(pairs, folder: Path, opts: FiguresConfig) -> list[Path]:
    return [p for fn, args in layer_matrix_jobs(pairs, folder, opts) for p in fn(*args)]


def _module_figure(module: str, panels, folder: Path, opts: FiguresConfig) -> list[Path]:
    """One module's matrices: a panel per run (within) and per other run (across)."""
    fig, axes = fs.figure(len(panels), w=4.0, h=3.6, colorbars=True)
    debiased = "(debiased)" if panels[0][1][0].debiased else "(biased)"
    for ax, (title, ps) in zip(axes, panels):
        value, pval, rows, cols = _grid(ps)
        image = ax.imshow(
            value,
            origin="lower",
            cmap="magma",
            vmin=min(0.0, np.nanmin(value)),
            vmax=1.0,
            interpolation="nearest",
            aspect="auto",
        )
        ax.set_xticks(range(cols), [str(i) for i in range(cols)], fontsize=7)
        ax.set_yticks(range(rows), [str(i) for i in range(rows)], fontsize=7)
        a, b = ps[0].run_a, ps[0].run_b
        ax.set_ylabel(f"layer of {a}", fontsize=8)
        ax.set_xlabel(f"layer of {b}", fontsize=8)
        ax.set_title(title, fontsize=8, y=1.0, pad=4)
        for i in range(rows):
            for j in range(cols):
                v, p = value[i, j], pval[i, j]
                if not math.isfinite(v):
                    continue
                weak = math.isfinite(p) and p >= ALPHA
                if rows <= ANNOTATE_MAX and cols <= ANNOTATE_MAX:
                    text = f"{v:.2f}" + ("*" if weak else "")
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=5.5,
                        color="white" if v < 0.6 else "black",
                    )
                elif weak:
                    ax.plot(j, i, ".", color="cyan", ms=3)
        fs.colorbar(image, ax, f"linear CKA {debiased}", False)
    split = panels[0][1][0].split
    fig.suptitle(f"Layer x layer CKA, {module} activations ({split} batch)", fontsize=9)
    fig.text(
        0.5,
        0.01,
        "* not above the permutation null (p >= 0.05)",
        ha="center",
        va="bottom",
        fontsize=7,
        color="0.3",
    )
    return fs.save(fig, folder, f"layer_cka_{module}", opts)
