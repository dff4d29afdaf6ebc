"""What a finished analysis wrote, and its rows in memory (returned by the Python API).

Reads nothing and writes nothing: :func:`pico_analyze.analyze.analyze_run` and ``compare_runs``
fill an :class:`AnalysisResult`; :mod:`pico_analyze.report` summarises it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pico_analyze.plan import ChunkResult
from pico_analyze.table import Row


@dataclass
class AnalysisResult:
    """What an analysis wrote, and its rows in memory."""

    out_dir: Path
    table_path: Path  # results.csv
    table_paths: list[Path]  # CSV, then parquet (or JSON lines)
    plots: list[Path]
    rows: list[Row]
    runs: list[str]
    steps: dict[str, list[int]]
    seconds: float
    stats: ChunkResult = field(repr=False, default_factory=ChunkResult)
    summary_path: Path | None = None
    summary_text: str = ""  # the short text summary (also in summary.txt)
    warnings: list[str] = field(default_factory=list)  # run-level: what could not be checked/read
    pairs: list = field(default_factory=list, repr=False)  # layer x layer CKA (LayerPair)
    layer_table_path: Path | None = None  # layer_similarity.csv
    report_paths: list[Path] = field(default_factory=list)  # report.md, report.html
    config: dict = field(default_factory=dict, repr=False)  # the resolved analysis config

    @property
    def notes(self) -> list[Row]:
        """Rows whose value could not be measured or carries a warning."""
        return [r for r in self.rows if r.note]

    def summary(self) -> str:
        """The short text summary that `pico-analyze` prints."""
        return self.summary_text
