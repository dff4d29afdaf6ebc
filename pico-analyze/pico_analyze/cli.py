"""The ``pico-analyze`` command: run, compare, metrics.

Reads command-line arguments (run directories or Hub repo ids, an optional analysis YAML) and
writes what :mod:`pico_analyze.analyze` writes, then prints where the results are and a short
summary. Errors in the config or the run are printed as one message (exit status 2); an analysis
in which nothing could be measured writes its table and notes, then exits with status 1.

    pico-analyze run RUN_DIR [--config analysis.yaml] [--out DIR] [--device auto|cpu|cuda]
                             [--workers N] [--force-train-split] [--revision REV]
    pico-analyze compare RUN_A RUN_B ... [--config analysis.yaml] [--out DIR] ...
    (both: [--format png,pdf,svg] [--dpi N] [--x-axis step|tokens])
    pico-analyze metrics
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import sys

# The imports below load torch (~10^6 objects that live as long as the process): the garbage
# collector is paused while they load, since its collections would only rescan them (~0.1 s).
_COLLECTING = gc.isenabled()
gc.disable()
try:
    import click

    from pico_analyze import __version__, writer_process
    from pico_analyze.config import ConfigError
    from pico_analyze.forking import frozen_objects
    from pico_analyze.load import SourceError
    from pico_format import RunFormatError
    from pico_format.command_line import OneLineErrors
finally:
    if _COLLECTING:
        gc.enable()

_COMMON = [
    click.option(
        "--config",
        "config",
        type=click.Path(exists=True, dir_okay=False),
        help="Analysis YAML (default: the default analysis).",
    ),
    click.option(
        "--device",
        default=None,
        help="auto (GPU when present), cpu, cuda, cuda:N. Default: the config's (auto).",
    ),
    click.option(
        "--workers",
        type=int,
        default=None,
        help="Worker processes (default: chosen from cores and checkpoints).",
    ),
    click.option(
        "--force-train-split",
        is_flag=True,
        help="Allow comparing train captures of different batches (across steps).",
    ),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option(
        "--format",
        "formats",
        default=None,
        help="Figure formats, comma-separated: png,pdf,svg (default: the config's, png).",
    ),
    click.option("--dpi", type=int, default=None, help="Figure resolution (default 110)."),
    click.option(
        "--x-axis",
        type=click.Choice(["step", "tokens"]),
        default=None,
        help="Figures' x axis: training step or tokens seen.",
    ),
]


def _figures(formats, dpi, x_axis) -> dict:
    out = {"formats": formats.split(",") if formats else None, "dpi": dpi, "x_axis": x_axis}
    return {k: v for k, v in out.items() if v is not None}


def _common(f):
    for option in reversed(_COMMON):
        f = option(f)
    return f


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="pico-analyze: %(message)s",
        stream=sys.stderr,
    )


class _BadInput(click.ClickException):
    exit_code = 2


def _fail(err: Exception):
    raise _BadInput(str(err)) from None


def _analyse(
    function, target, config, out, *, no_progress, formats, dpi, x_axis, **options
) -> None:
    """Run an analysis (analyze_run or compare_runs) with the commands' common options; a bad
    input is one line and exit 2."""
    progress = False if no_progress else None
    figures = _figures(formats, dpi, x_axis)
    try:
        with frozen_objects():  # torch and the analysis modules: out of every collection
            result = function(target, config, out, progress=progress, figures=figures, **options)
    except (ConfigError, SourceError, RunFormatError, ValueError) as err:
        _fail(err)
    finally:
        writer_process.discard()  # unused when the analysis stopped before writing
    _finish(result)


def _finish(result) -> None:
    """Print the summary; exit 1 when not one metric value could be measured (the loss and
    benchmark rows read from the run's files do not count)."""
    click.echo(result.summary())
    measured = result.stats.rows  # the metric rows of the runner
    if not any(math.isfinite(r.value) for r in measured):
        raise click.ClickException(
            f"nothing could be measured ({len(measured)} metric values, all noted as not "
            f"measurable; see the note column of {result.table_path})."
        )


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pico-analyze")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """Learning-dynamics analysis of Pico runs (and original pico-train runs)."""
    _setup_logging(verbose)
    # At exit, spare the interpreter its final garbage collection of every object still alive
    # (~0.2 s with torch and an analysis's rows loaded): the OS releases the memory anyway.
    # Every file is written and closed by then; the other exit handlers still run.
    atexit.register(gc.freeze)


@main.command()
@click.argument("run_dir")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: RUN_DIR/analysis).",
)
@click.option("--revision", default=None, help="Hub branch/commit when RUN_DIR is a repo id.")
@_common
def run(run_dir, out, revision, **common):
    """Analyse every checkpoint of RUN_DIR: a run directory, an original pico-train run, or a
    Hugging Face repo id (hf://owner/name[@branch])."""
    from pico_analyze.analyze import analyze_run

    _analyse(analyze_run, run_dir, out=out, revision=revision, **common)


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: FIRST_RUN/analysis-compare).",
)
@_common
def compare(runs, out, **common):
    """Compare RUNS step by step: metric curves overlaid, and similarity of their activations
    on the shared eval batch (CKA works across widths)."""
    from pico_analyze.analyze import compare_runs

    if len(runs) < 2:
        _fail(ValueError("compare needs at least two runs."))
    _analyse(compare_runs, list(runs), out=out, **common)


@main.command()
def metrics():
    """List the registered metrics."""
    from pico_analyze.metrics import get_metric, list_metrics

    for name in list_metrics():
        spec = get_metric(name)
        kind = "comparative" if spec.comparative else "single"
        click.echo(f"{name:<30} {kind:<12} {','.join(spec.kinds):<32} {spec.description}")


if __name__ == "__main__":
    main()
