"""The whole analysis of one run or several: config -> runner -> table -> plots -> report.

Reads run directories (ours or the original pico-train layout) or Hub repo ids and an optional
analysis config; writes into the output folder ``results.csv`` + ``results.parquet`` (metric rows
plus the loss/benchmark rows of :mod:`pico_analyze.scores`), ``layer_similarity.csv``, a fresh
``plots/`` folder, ``summary.txt``, ``report.md`` + a self-contained ``report.html`` and the
resolved ``config.yaml``. Python API::

    from pico_analyze import analyze_run, compare_runs
    result = analyze_run("runs/demo")                  # default analysis -> runs/demo/analysis/
    print(result.summary()); result.table_path; result.plots
    compare_runs(["runs/tiny", "runs/small"])          # -> runs/tiny/analysis-compare/
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from pico_analyze import report, report_document, scores, writer_process
from pico_analyze.config import AnalysisConfig, config_to_dict, figures_from, load_config
from pico_analyze.layer_similarity import layer_similarity, modules_of, write_pairs
from pico_analyze.load import Source
from pico_analyze.plan import torch_threads
from pico_analyze.preflight import compare_warnings
from pico_analyze.result import AnalysisResult
from pico_analyze.runner import run_analysis
from pico_analyze.sources import HubRun, open_source
from pico_analyze.table import Row, write_table
from pico_format import RunPaths, read_log
from pico_format.layout import ANALYSIS
from pico_format.yaml_file import dump_yaml

log = logging.getLogger("pico_analyze")
COMPARE_DIR = "analysis-compare"  # compare_runs' default output folder, under the first run


def _config(
    config, sources: list[Source], *, device, workers, force_train_split, progress, figures=None
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
    cfg = load_config(config, captured, overrides)
    if figures:  # e.g. {"formats": ["png", "pdf"], "dpi": 200} from the command line
        cfg.figures = figures_from({**dataclasses.asdict(cfg.figures), **figures})
    return cfg


def _with_scores(sources: list[Source], rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Metric rows plus loss/benchmark rows, every row stamped with its tokens_seen."""
    notes = []
    out = list(rows)
    for s in sources:
        steps = sorted({r.step for r in rows if r.run == s.name}) or s.steps()
        extra, why = scores.score_rows(s, steps)
        out += extra
        notes += why
        tokens = scores.tokens_seen(s, sorted(set(steps) | {r.step for r in extra}))
        for r in out:
            if r.run == s.name:
                r.tokens_seen = tokens.get(r.step)
    out.sort(key=lambda r: (r.run, r.step))
    return out, notes


def _write_outputs(rows, out_dir: Path, figures, logs, pairs, cross: bool):
    """(table paths, figure paths): the table, and the figures unless `figures` is None."""
    drawing = None
    if figures is not None:
        from pico_analyze import plots as plotting  # matplotlib (~0.4 s) only when drawing

        drawing = plotting.start_figures(rows, out_dir, figures, logs, pairs, compare=cross)
    try:  # the table is written while forked workers draw the figures
        tables = write_table(rows, out_dir)
    finally:
        plots: list[Path] = drawing.paths() if drawing else []
    return tables, plots


def _finish(
    sources: list[Source],
    cfg: AnalysisConfig,
    out_dir: Path,
    *,
    cross: bool,
    started: float,
    warnings: list[str] | None = None,
) -> AnalysisResult:
    rows, stats = run_analysis(sources, cfg, cross=cross)
    rows, score_notes = _with_scores(sources, rows)
    report.log_notes(rows)
    for line in score_notes:
        log.info("%s", line)
    steps = {s.name: sorted({r.step for r in rows if r.run == s.name}) for s in sources}
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = {}
    if cfg.plots:
        roots = {s.name: root for s in sources if (root := scores.run_root(s))}
        logs = {name: read_log(RunPaths(root).log) for name, root in roots.items()}
    # The command's writer process (imported matplotlib and pyarrow while this one imported
    # torch) writes the table and draws the figures while this one computes the layer x layer
    # CKA; without one, or if it fails, this one writes them afterwards.
    writer = writer_process.take()
    figures = cfg.figures if cfg.plots else None
    layer_figures = len(modules_of(sources[0], cfg)) if cfg.layer_similarity.enabled else 0
    handed = writer is not None and writer.submit(
        rows, out_dir, figures, logs, cross, layer_figures
    )
    try:
        with torch_threads():  # many small products, like the metrics: one thread (plan.py)
            pairs = layer_similarity(sources, steps, cfg, cross=cross)
    except BaseException:
        if writer is not None:
            writer.close()  # it ends (after its figure workers) without the pairs
        raise
    handed = handed and writer.send_pairs(pairs)
    layer_table = write_pairs(pairs, out_dir)
    written = writer.result() if handed else None
    if written is None:
        tables, plots = _write_outputs(rows, out_dir, figures, logs, pairs, cross)
    else:
        tables, plots = written
    config = config_to_dict(cfg)
    (out_dir / "config.yaml").write_text(dump_yaml(config))
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
        warnings=[*(warnings or []), *score_notes],
        pairs=pairs,
        layer_table_path=layer_table,
        config=config,
    )
    if cfg.report:
        result.report_paths = report_document.write_report(result, sources)
    result.summary_text = report.summarize(result)
    result.summary_path = out_dir / "summary.txt"
    result.summary_path.write_text(result.summary_text + "\n")
    if cfg.wandb.enabled:
        report.log_wandb(result, cfg.wandb, config)
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
    figures: dict | None = None,
) -> AnalysisResult:
    """Analyse every (selected) checkpoint of one run; see the module docstring.

    `run_dir`: our run directory, an original pico-train run, or a Hub repo id
    (``hf://owner/name@branch``). `config`: a YAML path, a dict, an AnalysisConfig, or None for
    the default analysis. `figures`: keys of the config's ``figures`` section to override
    (formats, dpi, x_axis, step_scale, normalize_previous). `out_dir` defaults to
    ``RUN_DIR/analysis`` (``./analysis-NAME`` for Hub runs).
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
        figures=figures,
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
    figures: dict | None = None,
) -> AnalysisResult:
    """Analyse several runs step by step and compare them (metric curves overlaid, and
    cross-run similarity of their activations on the shared eval batch at each common step).

    Runs trained on different data are named in a warning before any work. `out_dir` defaults
    to ``FIRST_RUN/analysis-compare`` (``./analysis-compare-NAME`` for a Hub run).
    """
    started = time.perf_counter()
    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two runs.")
    sources = [open_source(r) for r in run_dirs]
    seen: dict[str, int] = {}
    for s in sources:  # names label the rows: make them unique
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name}-{seen[s.name]}"
    warnings = compare_warnings(sources)  # before any work: are these runs comparable?
    for line in warnings:
        log.warning("%s", line)
    cfg = _config(
        config,
        sources,
        device=device,
        workers=workers,
        force_train_split=force_train_split,
        progress=progress,
        figures=figures,
    )
    if out_dir is None:
        first = sources[0]
        local = getattr(first, "root", None) is not None and not isinstance(first, HubRun)
        out_dir = Path(first.root) / COMPARE_DIR if local else Path(f"{COMPARE_DIR}-{first.name}")
    return _finish(sources, cfg, Path(out_dir), cross=True, started=started, warnings=warnings)
