"""Time the figures, the report and the layer x layer CKA of an analysis, apart from its metrics.

    python benchmarks/bench_figures.py [--shape tiny|small] [--layers 12] [--rows 128]
        [--checkpoints 5] [--compare] [--repeat 3]

Builds a synthetic run in our layout (benchmarks/analyze_runs.py, as bench_analyze.py does; two
runs of different width with --compare), analyses it once without figures (the original
pico-analyze's demo metric set, bench_analyze.demo_config), then times, in this process:

* the layer x layer CKA (within the run; with --compare also across runs, with the permutation
  null of each cross-run value);
* drawing every figure (PNG) with one process and with the automatic worker count (forked
  processes, figure_style.render): wall seconds and CPU seconds of this process and its children;
* writing report.md and report.html.

Prints one line per stage (minimum over --repeat). The whole-process time (metrics included) is
bench_analyze.py's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analyze_runs import BUILDERS  # noqa: E402
from bench_analyze import demo_config  # noqa: E402

from pico_analyze import figure_style, plots, report_document  # noqa: E402
from pico_analyze.analyze import analyze_run, compare_runs  # noqa: E402
from pico_analyze.config import FiguresConfig, load_config  # noqa: E402
from pico_analyze.layer_similarity import layer_similarity  # noqa: E402
from pico_analyze.plan import torch_threads  # noqa: E402
from pico_analyze.sources import open_source  # noqa: E402
from pico_format import RunPaths, read_log  # noqa: E402


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, repeat: int):
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w, c = time.perf_counter(), _cpu()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, _cpu() - c)
    return best_wall, best_cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="two runs (tiny and small)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shapes = [args.shape] + (["small" if args.shape == "tiny" else "tiny"] * args.compare)
        roots = []
        for i, shape in enumerate(shapes):
            root = Path(tmp) / f"run{i}-{shape}"
            BUILDERS["pico"](root, shape, args.checkpoints, args.rows, args.layers)
            roots.append(root)
        cfg = {
            **demo_config(),
            "plots": False,
            "report": False,
            "progress": False,
            "layer_similarity": {"enabled": False},
        }
        out = Path(tmp) / "analysis"
        analyse = compare_runs if args.compare else analyze_run
        result = analyse(roots if args.compare else roots[0], cfg, out)
        sources = [open_source(r) for r in roots]
        ls_cfg = load_config({**cfg, "layer_similarity": {"enabled": True}})

        def pairs_one_thread():  # as the analysis runs it (analyze.py)
            with torch_threads():
                return layer_similarity(sources, result.steps, ls_cfg, cross=args.compare)

        wall, cpu, pairs = _timed(pairs_one_thread, args.repeat)
        print(
            f"{' vs '.join(shapes)}: {args.layers} layers, {args.checkpoints} checkpoints, "
            f"{args.rows} sequences; {len(result.rows)} values; load average "
            f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} cores"
        )
        print(f"layer x layer CKA: {len(pairs)} pairs in {wall:.2f} s (CPU {cpu:.2f} s)")
        result.pairs = pairs
        logs = {s.name: read_log(RunPaths(r).log) for s, r in zip(sources, roots)}
        opts = FiguresConfig()
        for label, workers in (("one process", 1), ("automatic", figure_style.MAX_FIGURE_WORKERS)):
            figure_style.MAX_FIGURE_WORKERS = workers
            wall, cpu, files = _timed(
                lambda: plots.plot_figures(
                    result.rows, out, opts, logs, pairs, compare=args.compare
                ),
                args.repeat,
            )
            n = figure_style.figure_workers(len(files))
            print(
                f"figures ({label}, {n} process{'es' if n > 1 else ''}): {len(files)} PNG in "
                f"{wall:.2f} s (CPU {cpu:.2f} s)"
            )
        result.plots = files
        result.config = {}
        wall, cpu, _ = _timed(lambda: report_document.write_report(result, sources), args.repeat)
        print(f"report.md + report.html: {wall:.2f} s (CPU {cpu:.2f} s)")


if __name__ == "__main__":
    main()
