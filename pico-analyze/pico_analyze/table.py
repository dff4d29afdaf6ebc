"""The results table: one tidy row per measured value.

Reads :class:`~pico_analyze.runner.Row` objects and writes ``results.csv`` plus
``results.parquet`` (or ``results.jsonl`` when pyarrow is missing) into the output folder.
Columns: run, step, split, component, kind, module, layer, head, metric (the entry's label),
function (the registered metric), reference (``step N`` / ``run NAME`` for comparative
metrics), value (NaN when it could not be measured), note (why, or a warning), tokens_seen (tokens
trained on before the step, when the run records it).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, fields
from pathlib import Path

from pico_analyze.plan import Row

COLUMNS = [f.name for f in fields(Row)]
CSV_NAME, PARQUET_NAME, JSONL_NAME = "results.csv", "results.parquet", "results.jsonl"


def write_table(rows: list[Row], out_dir: Path) -> list[Path]:
    """Write the table; return the paths written (CSV first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        jsonl = out_dir / JSONL_NAME
        with open(jsonl, "w") as f:
            for row in rows:
                d = asdict(row)
                d["value"] = None if math.isnan(d["value"]) else d["value"]
                f.write(json.dumps(d) + "\n")
        return [csv_path, jsonl]
    schema = pa.schema(
        [
            ("run", pa.string()),
            ("step", pa.int64()),
            ("split", pa.string()),
            ("component", pa.string()),
            ("kind", pa.string()),
            ("module", pa.string()),
            ("layer", pa.int64()),
            ("head", pa.int64()),
            ("metric", pa.string()),
            ("function", pa.string()),
            ("reference", pa.string()),
            ("value", pa.float64()),
            ("note", pa.string()),
            ("tokens_seen", pa.int64()),
        ]
    )
    columns = {name: [getattr(r, name) for r in rows] for name in COLUMNS}
    parquet = out_dir / PARQUET_NAME
    pq.write_table(pa.table(columns, schema=schema), parquet)
    return [csv_path, parquet]


def read_table(path: str | Path) -> list[Row]:
    """Read a results.csv back into rows (types restored)."""

    def opt_int(text: str) -> int | None:
        return int(text) if text != "" else None

    rows = []
    with open(path, newline="") as f:
        for d in csv.DictReader(f):
            rows.append(
                Row(
                    run=d["run"],
                    step=int(d["step"]),
                    split=d["split"] or None,
                    component=d["component"],
                    kind=d["kind"],
                    module=d["module"],
                    layer=int(d["layer"]),
                    head=opt_int(d["head"]),
                    metric=d["metric"],
                    function=d["function"],
                    reference=d["reference"] or None,
                    value=float(d["value"]) if d["value"] != "" else math.nan,
                    note=d["note"],
                    tokens_seen=opt_int(d.get("tokens_seen") or ""),
                )
            )
    return rows
