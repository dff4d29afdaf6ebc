"""The colour bar drawn in its panel's coordinates (pico_analyze.colour_bar): its ticks, their
labels and positions, and its label, against matplotlib's own locators, formatters and norms."""

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pico_analyze.colour_bar import LEFT, WIDTH, colour_bar  # noqa: E402


def _panel(grid, log=False):
    fig = Figure(figsize=(5, 3))
    fig.subplots_adjust(right=0.7)
    ax = fig.add_subplot()
    image = ax.imshow(grid, norm=LogNorm() if log else None, aspect="auto")
    return fig, ax, image


def _y_of(text, renderer, ax) -> float:
    """A tick label's vertical centre in fractions of the panel's height."""
    box = text.get_window_extent(renderer)
    return (0.5 * (box.y0 + box.y1) - ax.bbox.y0) / ax.bbox.height


@pytest.mark.parametrize(
    ("grid", "log"),
    [
        (np.linspace(0.4131, 0.4172, 12).reshape(3, 4), False),
        (np.logspace(0, 6, 12).reshape(3, 4), True),
        (np.linspace(-0.0125, -0.00125, 12).reshape(3, 4), False),
    ],
)
def test_ticks_lie_in_the_range_at_their_values_and_the_label_clears_them(grid, log):
    fig, ax, image = _panel(grid, log)
    bar = colour_bar(ax, image, "Gini index", log)
    low, high = grid.min(), grid.max()
    assert image.get_clim() == (low, high)  # the data's range is kept
    assert len(bar.ticks) >= 2 and all(low <= v <= high for v in bar.ticks)
    fig.draw_without_rendering()
    renderer = FigureCanvasAgg(fig).get_renderer()
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    for value, text in zip(bar.ticks, bar.tick_labels):
        where = (scale(value) - scale(low)) / (scale(high) - scale(low))
        assert _y_of(text, renderer, ax) == pytest.approx(where, abs=0.02)
        bar_right = ax.bbox.x0 + (LEFT + WIDTH) * ax.bbox.width
        assert text.get_window_extent(renderer).x0 > bar_right  # right of the bar
    widest = max(t.get_window_extent(renderer).x1 for t in bar.tick_labels)
    assert bar.label.get_window_extent(renderer).x0 > widest
    assert bar.label.get_text() == "Gini index" and bar.label.get_rotation() == 90
    if log:
        assert [t.get_text() for t in bar.tick_labels][0] == "$\\mathdefault{10^{0}}$"


def test_a_constant_panel_and_an_offset():
    fig, ax, image = _panel(np.full((3, 4), 0.5))
    bar = colour_bar(ax, image, "x", False)
    low, high = image.get_clim()  # widened around the value, on the heatmap too
    assert low < 0.5 < high and image.norm(0.5) == pytest.approx(0.5)
    assert bar.offset is None
    fig, ax, image = _panel(np.linspace(1e-9, 3e-9, 12).reshape(3, 4))
    bar = colour_bar(ax, image, "x", False)
    assert bar.offset is not None and "-9" in bar.offset.get_text().replace("\u2212", "-")
    assert all(float(t.get_text()) < 10 for t in bar.tick_labels)  # scaled by the offset
