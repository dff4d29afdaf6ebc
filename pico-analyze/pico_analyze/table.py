"""The results table: one tidy row per measured value.

Reads :class:`Row` objects (made by :mod:`pico_analyze.runner`) and writes ``results.csv`` plus
``results.parquet`` (or ``results.jsonl`` when pyarrow is missing) into the output folder.
Columns: run, step, split, component, kind, module, layer, head, metric (the entry's label),
function (the registered metric), reference_step and reference_run (what a comparative metric
compared with: an earlier/later step of the same run, or the reference run at the same step),
value (NaN when it could not be measured), note (why, or a warning), tokens_seen (tokens
trained on before the step, when the run records it; loss and benchmark rows come from
:mod:`pico_analyze.scores`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True, slots=True)
class NotMeasurable:
    """Why a value could not be measured: its row gets value NaN and this reason as its note."""

    reason: str


@dataclass(slots=True)
class Row:
    """One measured value: the results table's columns."""

    run: str
    step: int
    split: str | None
    component: str  # simple | ov_circuit | ov_circuit_concat | qk_circuit | qk_circuit_concat
    kind: str
    module: str
    layer: int
    head: int | None
    metric: str  # the entry's label
    function: str  # the registered metric
    reference_step: int | None  # comparative: the step compared with (None: not comparative)
    reference_run: str | None  # cross-run comparisons: the run compared with; else None
    value: float
    note: str = ""
    tokens_seen: int | None = None  # tokens trained on before `step` (None: unknown)

    @property
    def cross_run(self) -> bool:
        """Whether this value compares the run with another run (``compare``)."""
        return self.reference_run is not None

    @property
    def reference(self) -> str | None:
        """What a comparative value was compared with, for people: ``step N`` or ``run NAME``."""
        if self.reference_run is not None:
            return f"run {self.reference_run}"
        return None if self.reference_step is None else f"step {self.reference_step}"


COLUMNS = [f.name for f in fields(Row)]
_INT_COLUMNS = {"step", "layer", "head", "reference_step", "tokens_seen"}
_FLOAT_COLUMNS = {"value"}
_OPTIONAL_COLUMNS = {"split", "head", "reference_step", "reference_run", "tokens_seen"}  # "": None
CSV_NAME, PARQUET_NAME, JSONL_NAME = "results.csv", "results.parquet", "results.jsonl"
# The rows read from a run's files (pico_analyze.scores): their metric functions, kinds, layer
TRAIN_LOSS, EVAL_LOSS, EVAL_PPL = "train_loss", "eval_loss", "eval_perplexity"
LOSS_KIND, BENCHMARK_KIND, MODEL_LAYER = "loss", "benchmark", -1


def _columns(rows: list[Row]) -> dict[str, list]:
    return {name: [getattr(r, name) for r in rows] for name in COLUMNS}


def write_table(rows: list[Row], out_dir: Path) -> list[Path]:
    """Write the table; return the paths written (CSV first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(
            ["" if v is None else v for v in (getattr(r, c) for c in COLUMNS)] for r in rows
        )
    columns = _columns(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        jsonl = out_dir / JSONL_NAME
        values = [None if math.isnan(v) else v for v in columns["value"]]
        with open(jsonl, "w") as f:
            for i in range(len(rows)):
                d = {c: columns[c][i] for c in COLUMNS}
                d["value"] = values[i]
                f.write(json.dumps(d) + "\n")
        return [csv_path, jsonl]

    def arrow_type(name: str):
        if name in _INT_COLUMNS:
            return pa.int64()
        return pa.float64() if name in _FLOAT_COLUMNS else pa.string()

    schema = pa.schema([(name, arrow_type(name)) for name in COLUMNS])
    parquet = out_dir / PARQUET_NAME
    pq.write_table(pa.table(columns, schema=schema), parquet)
    return [csv_path, parquet]


def read_table(path: str | Path) -> list[Row]:
    """Read a results.csv back into rows (types restored)."""

    def convert(name: str, text: str):
        if name in _FLOAT_COLUMNS:
            return float(text) if text != "" else math.nan
        if text == "" and name in _OPTIONAL_COLUMNS:
            return None
        return int(text) if name in _INT_COLUMNS else text

    with open(path, newline="") as f:
        return [Row(**{c: convert(c, d[c]) for c in COLUMNS}) for d in csv.DictReader(f)]
