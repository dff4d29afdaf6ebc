"""The notebook API: runs, logs, scores, captures and results as pandas DataFrames.

Reads run directories and analysis folders (through ``pico_format`` and the analysis stages);
writes only what an analysis writes. Everything here is re-exported by ``import pico_analyze as
pa``, so ``pa.<TAB>`` lists it::

    import pico_analyze as pa
    df = pa.run("runs/demo")                         # run the default analysis -> DataFrame
    df = pa.compare(["runs/sweep/demo-w32", "runs/sweep/demo"])   # compare runs -> DataFrame
    df = pa.load_results("runs/demo/analysis")       # read a results table back
    log = pa.load_log("runs/demo")                   # training log: step, loss, lr, ...
    ev = pa.load_eval("runs/demo")                   # held-out loss/perplexity per checkpoint
    cap = pa.read_capture("runs/demo/checkpoints/step_00000100", "eval")
    acts = cap.get("activations", "model.layers.0.mlp.down_proj")

The results DataFrame has the table's columns (run, step, split, component, kind, module,
layer, head, metric, function, reference_step, reference_run, value, note, tokens_seen);
``metric`` is the entry's label
(``cka@last``), ``value`` NaN where ``note`` says why it could not be measured.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pico_analyze import _NOTEBOOK
from pico_analyze.layer_similarity import CSV_NAME as LAYER_CSV
from pico_analyze.table import COLUMNS, CSV_NAME, PARQUET_NAME
from pico_format import (
    CaptureReader,
    RunFormatError,
    RunPaths,
    benchmark_rows,
    list_checkpoints,
    read_benchmarks,
    read_json,
    read_log,
)

__all__ = list(_NOTEBOOK)  # the names `import pico_analyze` re-exports lazily


def results_frame(rows) -> pd.DataFrame:
    """Table rows (:class:`~pico_analyze.plan.Row`) as a DataFrame with typed columns."""
    frame = pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in rows], columns=COLUMNS)
    for col in ("step", "layer"):
        frame[col] = frame[col].astype("int64")
    for col in ("head", "reference_step", "tokens_seen"):
        frame[col] = frame[col].astype("Int64")  # nullable: None where it does not apply
    frame["value"] = frame["value"].astype("float64")
    return frame


def _frame(result) -> pd.DataFrame:
    frame = results_frame(result.rows)
    frame.attrs["out_dir"] = str(result.out_dir)
    return frame


def run(run_dir: str | Path, config=None, out_dir: str | Path | None = None, **options):
    """Analyse one run (a run directory, an original pico-train run or a Hub id) and return
    its results table as a DataFrame.

    `config`: an analysis YAML path, a dict or None (the default analysis); `options` go to
    :func:`pico_analyze.analyze_run` (device, workers, progress, ...). The files are written as
    by ``pico-analyze run``; ``frame.attrs["out_dir"]`` says where.
    """
    from pico_analyze.analyze import analyze_run

    return _frame(analyze_run(run_dir, config, out_dir, **options))


def compare(runs: list[str | Path], config=None, out_dir: str | Path | None = None, **options):
    """Compare several runs (as ``pico-analyze compare``) and return the results DataFrame:
    each run's metrics, and the cross-run rows (``reference`` = ``run NAME``)."""
    from pico_analyze.analyze import compare_runs

    return _frame(compare_runs(list(runs), config, out_dir, **options))


def _analysis_file(path: Path, names: tuple[str, ...]) -> Path:
    if path.is_file():
        return path
    for folder in (path, path / "analysis"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"No {' or '.join(names)} in '{path}' (nor in '{path / 'analysis'}').")


def load_results(path: str | Path) -> pd.DataFrame:
    """A results table as a DataFrame: a results.parquet/.csv file, an analysis folder, or a
    run directory (its ``analysis/`` folder)."""
    file = _analysis_file(Path(path), (PARQUET_NAME, CSV_NAME))
    if file.suffix == ".parquet":
        frame = pd.read_parquet(file)
    else:
        frame = pd.read_csv(file, keep_default_na=False, na_values={"value": [""]})
        for col in ("split", "reference_run"):
            frame[col] = frame[col].replace("", None)
        for col in ("head", "reference_step", "tokens_seen"):
            if col in frame:
                frame[col] = pd.to_numeric(frame[col].replace("", None)).astype("Int64")
    for col in ("head", "reference_step", "tokens_seen"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    return frame


def load_layer_similarity(path: str | Path) -> pd.DataFrame:
    """The layer x layer CKA table (layer_similarity.csv) of an analysis folder or run."""
    return pd.read_csv(_analysis_file(Path(path), (LAYER_CSV,)), keep_default_na=False)


def load_log(run_dir: str | Path) -> pd.DataFrame:
    """The training log (one row per logged step: step, loss, lr, grad_norm, tokens_per_s,
    tokens_seen, ... and the eval records); raises if the run has no log."""
    run = RunPaths(run_dir)
    if not run.log.is_file():
        raise RunFormatError(f"'{run_dir}' has no training log ({run.log.name}).")
    return pd.DataFrame(read_log(run.log))


def checkpoints(run_dir: str | Path) -> list[int]:
    """Steps of the run's complete checkpoints, ascending."""
    return list_checkpoints(RunPaths(run_dir))


def load_eval(run_dir: str | Path) -> pd.DataFrame:
    """Held-out evaluation per checkpoint: step, eval_loss, eval_perplexity, eval_tokens."""
    run = RunPaths(run_dir)
    records = [
        {"step": s, **read_json(run.checkpoint(s).eval)}
        for s in checkpoints(run_dir)
        if run.checkpoint(s).eval.is_file()
    ]
    return pd.DataFrame(records, columns=None if records else ["step", "eval_loss"])


def load_benchmarks(run_dir: str | Path) -> pd.DataFrame:
    """Benchmark scores per checkpoint (benchmarks.json), one row per (step, task, metric):
    step, task, metric, value, stderr, n_shot, limit."""
    run = RunPaths(run_dir)
    records = []
    for s in checkpoints(run_dir):
        bench = read_benchmarks(run.checkpoint(s))
        if bench:
            records += [
                {**b, "step": s, "limit": bench.get("limit")} for b in benchmark_rows(bench)
            ]
    columns = ["step", "task", "metric", "value", "stderr", "n_shot", "limit"]
    return pd.DataFrame(records, columns=columns)


def read_capture(checkpoint: str | Path, split: str = "eval") -> CaptureReader:
    """The capture of `split` in a checkpoint folder (``runs/demo/checkpoints/step_...``):
    ``.get(kind, module)`` reads one tensor, ``.manifest`` says what it holds."""
    return CaptureReader(checkpoint, split)
