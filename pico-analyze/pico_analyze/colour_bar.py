"""A labelled colour bar drawn into its heatmap panel's own coordinates.

matplotlib's ``Figure.colorbar`` puts each bar in an Axes of its own. A metric figure gives
every heatmap panel its own bar (its panels are components whose magnitudes differ by orders),
and those 15 Axes, each with two axis objects, spines and tick objects, were 0.20 of the
0.46 CPU-s that a 15-panel figure took (``benchmarks/bench_figures.py``). This draws the same
elements as plain artists of the panel, outside its clip box: the gradient (an image), its
outline, tick marks and labels (matplotlib's locators and formatters: ``MaxNLocator`` with
``ScalarFormatter`` and its offset text, or ``LogLocator`` with ``LogFormatterSciNotation``),
and the label, which is placed when the figure is drawn, beyond the widest tick label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import rcParams
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.markers import TICKRIGHT
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.ticker import (
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    ScalarFormatter,
)
from matplotlib.transforms import Bbox, offset_copy

LEFT, WIDTH = 1.04, 0.05  # the bar, in fractions of the panel's width
TICK_POINTS, PAD_POINTS = 3.5, 2.0  # matplotlib's default major tick length and label pad
TICK_SIZE, LABEL_SIZE = 6, 7  # font sizes of the tick labels and of the label
ON_TOP = 2.6  # z-order: above the spines, never composited with the heatmap's image


@dataclass
class ColourBar:
    """The artists of one bar (all children of the panel); `ticks` holds the tick values."""

    ticks: list[float]
    tick_labels: list[Text]
    offset: Text | None
    label: Text


def _ticks(low: float, high: float, log: bool) -> tuple[list[float], list[str], str]:
    """Tick values within [low, high], their labels and the formatter's offset text."""
    locator = LogLocator() if log else MaxNLocator(4)
    formatter = LogFormatterSciNotation() if log else ScalarFormatter()
    for helper in (locator, formatter):
        helper.create_dummy_axis()
        helper.axis.set_view_interval(low, high)
    slack = 1e-9 * (high - low)
    values = [float(v) for v in locator() if low - slack <= v <= high + slack]
    formatter.set_locs(values)
    return values, [formatter(v) for v in values], formatter.get_offset()


def colour_bar(ax, image, label: str, log: bool) -> ColourBar:
    """A colour bar for `image` (drawn in `ax`) right of `ax`, labelled `label`; `log` when the
    image's norm is logarithmic. Needs the margin ``figure_style.figure(colorbars=True)``
    leaves right of each panel."""
    fig = ax.figure
    # A constant panel gets a range around its value (as matplotlib's own bars do), on the
    # heatmap too; a log norm always spans decades here (figure_style.spans_decades).
    low, high = image.norm.vmin, image.norm.vmax
    if not log:
        low, high = MaxNLocator().nonsingular(low, high)
    image.set_clim(low, high)
    right = LEFT + WIDTH
    bar = AxesImage(
        ax,
        cmap=image.cmap,
        interpolation="nearest",
        origin="lower",
        extent=(LEFT, right, 0.0, 1.0),
        transform=ax.transAxes,
        zorder=ON_TOP,
    )
    bar.set_data(np.linspace(0.0, 1.0, 256)[:, None])
    bar.set_clim(0.0, 1.0)
    bar.set_clip_on(False)
    ax.add_artist(bar)
    outline = Rectangle(
        (LEFT, 0.0),
        WIDTH,
        1.0,
        transform=ax.transAxes,
        fill=False,
        linewidth=rcParams["axes.linewidth"],
        edgecolor=rcParams["axes.edgecolor"],
        clip_on=False,
        zorder=ON_TOP + 0.1,
    )
    ax.add_artist(outline)

    values, texts, offset = _ticks(low, high, log)
    where = [float(image.norm(v)) for v in values]  # the heatmap's own value -> colour map
    ax.add_artist(
        Line2D(
            [right] * len(where),
            where,
            linestyle="none",
            marker=TICKRIGHT,
            markersize=TICK_POINTS,
            markeredgewidth=rcParams["ytick.major.width"],
            color=rcParams["ytick.color"],
            transform=ax.transAxes,
            clip_on=False,
            zorder=ON_TOP,
        )
    )
    beside = offset_copy(ax.transAxes, fig=fig, x=TICK_POINTS + PAD_POINTS, units="points")
    tick_labels = [
        ax.text(right, y, text, transform=beside, fontsize=TICK_SIZE, va="center", ha="left",
                clip_on=False)
        for y, text in zip(where, texts)
    ]  # fmt: skip
    offset_text = None
    if offset:
        above = offset_copy(ax.transAxes, fig=fig, y=PAD_POINTS, units="points")
        offset_text = ax.text(
            LEFT, 1.0, offset, transform=above, fontsize=TICK_SIZE, va="bottom", ha="left",
            clip_on=False,
        )  # fmt: skip

    def beyond_ticks(renderer) -> Bbox:
        """Where the label goes: right of the bar and its tick labels, as drawn."""
        boxes = [t.get_window_extent(renderer) for t in tick_labels]
        boxes.append(outline.get_window_extent(renderer))
        return Bbox.union(boxes)

    name = ax.annotate(
        label,
        xy=(1.0, 0.5),
        xycoords=beyond_ticks,
        xytext=(PAD_POINTS + 1, 0),
        textcoords="offset points",
        rotation=90,
        fontsize=LABEL_SIZE,
        va="center",
        ha="left",
        annotation_clip=False,
    )
    return ColourBar(values, tick_labels, offset_text, name)


__all__ = ["ColourBar", "colour_bar"]
