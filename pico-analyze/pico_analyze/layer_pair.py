"""One layer x layer CKA value: a row of ``layer_similarity.csv``.

Made by :mod:`pico_analyze.layer_similarity`, drawn by :mod:`pico_analyze.plots_layers`. Apart
from them because it imports nothing heavy: the process that draws the figures
(:mod:`pico_analyze.writer_process`) reads these records without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class LayerPair:
    """CKA of (run_a, layer_a) and (run_b, layer_b) for one module at one step."""

    step: int
    split: str
    module: str
    run_a: str
    layer_a: int
    run_b: str
    layer_b: int
    cka: float
    debiased: bool = True
    p_value: float = math.nan
    null_low: float = math.nan
    null_high: float = math.nan
    null_mean: float = math.nan
    note: str = ""

    @property
    def within(self) -> bool:
        return self.run_a == self.run_b
