"""The whole analysis of one run or several: config -> runner -> table -> plots -> report.

Reads run directories (ours or the original pico-train layout) or Hub repo ids and an optional
analysis config; writes into the output folder ``results.csv`` + ``results.parquet``,
``plots/*.png``, ``summary.txt`` and the resolved ``config.yaml``. Python API::

    from pico_analyze import analyze_run, compare_runs
    result = analyze_run("runs/demo")                  # default analysis -> runs/demo/analysis/
    print(result.summary()); result.table_path; result.plots
    compare_runs(["runs/tiny", "runs/small"], out_dir="analysis-compare")
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pico_analyze import plots as plotting
from pico_analyze import report
from pico_analyze.config import AnalysisConfig, config_to_dict, load_config
from pico_analyze.load import Source
from pico_analyze.result import AnalysisResult
from pico_analyze.runner import run_analysis
from pico_analyze.sources import HubRun, open_source
from pico_analyze.table import write_table
from pico_format import RunPaths
from pico_format.layout import ANALYSIS
from pico_format.yaml_file import dump_yaml

log = logging.getLogger("pico_analyze")
COMPARE_DIR = "analysis-compare"  # compare_runs' default output folder (not inside a run)


def _config(
    config, sources: list[Source], *, device, workers, force_train_split, progress
) -> AnalysisConfig:
    known = [s.captured_suffixes() for s in sources]
    captured = None
    if all(k is not None for k in known):
        captured = [x for x in known[0] if all(x in k for k in known[1:])]
    overrides = {
        "device": device,
        "workers": workers,
        "progress": progress,
        "force_train_split": True if force_train_split else None,
    }
    return load_config(config, captured, overrides)


def _finish(
    sources: list[Source], cfg: AnalysisConfig, out_dir: Path, *, cross: bool, started: float
) -> AnalysisResult:
    rows, stats = run_analysis(sources, cfg, cross=cross)
    report.log_notes(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = write_table(rows, out_dir)
    plots: list[Path] = []
    if cfg.plots:
        plots = (plotting.plot_compare if cross else plotting.plot_run)(rows, out_dir)
    (out_dir / "config.yaml").write_text(dump_yaml(config_to_dict(cfg)))
    steps = {s.name: sorted({r.step for r in rows if r.run == s.name}) for s in sources}
    result = AnalysisResult(
        out_dir=out_dir,
        table_path=tables[0],
        table_paths=tables,
        plots=plots,
        rows=rows,
        runs=[s.name for s in sources],
        steps=steps,
        seconds=time.perf_counter() - started,
        stats=stats,
    )
    result.summary_text = report.summarize(result)
    result.summary_path = out_dir / "summary.txt"
    result.summary_path.write_text(result.summary_text + "\n")
    if cfg.wandb.enabled:
        report.log_wandb(result, cfg.wandb, config_to_dict(cfg))
    return result


def analyze_run(
    run_dir: str | Path,
    config: str | Path | dict | AnalysisConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    workers: int | None = None,
    force_train_split: bool = False,
    progress: bool | None = None,
    revision: str | None = None,
) -> AnalysisResult:
    """Analyse every (selected) checkpoint of one run; see the module docstring.

    `run_dir`: our run directory, an original pico-train run, or a Hub repo id
    (``hf://owner/name@branch``). `config`: a YAML path, a dict, an AnalysisConfig, or None for
    the default analysis. `out_dir` defaults to ``RUN_DIR/analysis`` (``./analysis-NAME`` for Hub
    runs).
    """
    started = time.perf_counter()
    source = open_source(run_dir, revision)
    cfg = _config(
        config,
        [source],
        device=device,
        workers=workers,
        force_train_split=force_train_split,
        progress=progress,
    )
    if out_dir is None:
        out_dir = (
            Path(f"{ANALYSIS}-{source.name}")
            if isinstance(source, HubRun)
            else RunPaths(run_dir).analysis
        )
    return _finish([source], cfg, Path(out_dir), cross=False, started=started)


def compare_runs(
    run_dirs: list[str | Path],
    config: str | Path | dict | AnalysisConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    workers: int | None = None,
    force_train_split: bool = False,
    progress: bool | None = None,
) -> AnalysisResult:
    """Analyse several runs step by step and compare them (metric curves overlaid, and
    cross-run similarity of their activations on the shared eval batch at each common step)."""
    started = time.perf_counter()
    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two runs.")
    sources = [open_source(r) for r in run_dirs]
    seen: dict[str, int] = {}
    for s in sources:  # names label the rows: make them unique
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name}-{seen[s.name]}"
    cfg = _config(
        config,
        sources,
        device=device,
        workers=workers,
        force_train_split=force_train_split,
        progress=progress,
    )
    return _finish(sources, cfg, Path(out_dir or COMPARE_DIR), cross=True, started=started)
