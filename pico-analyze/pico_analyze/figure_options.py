"""The figure options of an analysis (the config's ``figures:`` section), apart from the config.

Imports nothing heavy (no torch), so that the process drawing the figures
(:mod:`pico_analyze.writer_process`) can read them without importing torch;
:mod:`pico_analyze.config` reads and validates them (``figures_from``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FiguresConfig:
    """How plots are drawn and written (see plots.py)."""

    formats: list[str] = field(default_factory=lambda: ["png"])  # png | pdf | svg
    dpi: int = 110
    x_axis: str = "step"  # step | tokens (tokens seen)
    step_scale: str = "auto"  # auto (symlog when checkpoints are log-spaced) | linear | symlog
    normalize_previous: bool = False  # divide @previous change metrics by the step gap
