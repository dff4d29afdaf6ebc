"""A process that writes an analysis's outputs (the results table and the figures), started by
the ``pico-analyze run|compare`` command before it imports torch.

Why: the command's first second is spent importing torch on one core while the other core
idles, and the outputs need libraries that take as long again to import (matplotlib ~0.3 s,
pyarrow with its pandas shim ~0.5 s) at the end, after the metrics. This process is forked
first thing (:func:`prestart`, from ``pico_analyze.__main__``), imports those libraries (never
torch) on the idle core, and waits. The analysis (:mod:`pico_analyze.analyze`) hands it the
rows, the training logs and the figure options (:meth:`Writer.submit`) as soon as the metrics
are done; it starts drawing the figures (forking its own figure workers,
:mod:`pico_analyze.figure_style`) and writes ``results.csv`` + ``results.parquet`` while the
analysis computes the layer x layer CKA, whose pairs come next (:meth:`Writer.send_pairs`,
their figures are added); then it answers with the paths written (:meth:`Writer.result`). The
same functions write the same files as in the analysis's own process; where this process is
missing (the Python API, or not Linux) or fails, the analysis writes them itself.

Forked, not spawned: at that point the command has imported only click and the standard library
and started no thread, and a spawned process would import Python again. Rows travel as tuples
of plain values (pickled ~10x faster than the dataclass objects).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from operator import attrgetter
from pathlib import Path

__all__ = ["Writer", "discard", "prestart", "take"]


class Writer:
    """The main process's handle of the writer process (a duplex pipe to it)."""

    def __init__(self, conn, pid: int):
        self.conn, self.pid = conn, pid
        self.pending = False

    def submit(self, rows, out_dir: Path, figures, logs, compare: bool, layer_figures: int) -> bool:
        """Hand the outputs over: the table of `rows` and, when `figures` (a FiguresConfig) is
        not None, the figures (`layer_figures` of them from the layer x layer pairs, which
        :meth:`send_pairs` hands over later); returns False when the process is gone."""
        from pico_analyze.table import COLUMNS

        values = attrgetter(*COLUMNS)
        rows = [values(r) for r in rows]
        return self._send((rows, Path(out_dir), figures, logs, compare, layer_figures))

    def send_pairs(self, pairs) -> bool:
        """The layer x layer CKA pairs (their figures and the end of the job); False when the
        process is gone."""
        return self._send(pairs)

    def _send(self, message) -> bool:
        if self.conn is None:
            return False
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            self.close()
            return False
        self.pending = True
        return True

    def result(self) -> tuple[list[Path], list[Path]] | None:
        """(table paths, figure paths) once written, or None when the process failed (its
        error is logged; the caller then writes the outputs itself)."""
        if not self.pending:
            return None
        self.pending = False
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            status, payload = "error", "the writer process ended without an answer"
        self.close(wait=True)  # it ends once it has answered: its CPU time is then ours
        if status == "ok":
            return payload
        import logging

        logging.getLogger("pico_analyze").info(
            "writer process failed; writing the outputs here:\n%s", payload
        )
        return None

    def close(self, wait: bool = False) -> None:
        """Close the pipe: the process ends (at once if it is waiting for a job); reap it if it
        has ended (`wait`: wait for it to end, as it does right after answering)."""
        if self.conn is None:
            return
        self.conn.close()
        self.conn = None
        try:
            os.waitpid(self.pid, 0 if wait else os.WNOHANG)
        except ChildProcessError:
            pass


_PRESTARTED: Writer | None = None


def prestart() -> None:
    """Fork the writer process (Linux, and only while torch is not imported: a fork after it
    would gain nothing). :func:`take` hands it to the analysis."""
    global _PRESTARTED
    if _PRESTARTED is not None or not sys.platform.startswith("linux") or "torch" in sys.modules:
        return
    ours, theirs = multiprocessing.Pipe()
    pid = os.fork()
    if pid == 0:  # the writer process: never returns into the caller's code
        code = 1
        try:
            ours.close()
            _serve(theirs)
            code = 0
        except BaseException:  # noqa: BLE001 (KeyboardInterrupt too: leave quietly)
            pass
        finally:
            os._exit(code)
    theirs.close()
    _PRESTARTED = Writer(ours, pid)


def take() -> Writer | None:
    """The pre-started writer process, once (None when there is none)."""
    global _PRESTARTED
    writer, _PRESTARTED = _PRESTARTED, None
    return writer


def discard() -> None:
    """Let an unused pre-started writer process go (e.g. the analysis failed before writing)."""
    writer = take()
    if writer is not None:
        writer.close()


# ----------------------------------------------------------------------------------------------
# In the writer process
# ----------------------------------------------------------------------------------------------


def _preload() -> None:
    """Import what writing and drawing use (not torch), while the main process imports torch."""
    import gc

    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401

    from pico_analyze import plots, table  # noqa: F401

    pa.array([0.0])  # the first array constructor imports pyarrow's pandas shim (pandas)
    gc.freeze()  # what is imported now is never scanned again, here nor in figure workers


def _serve(conn) -> None:
    _preload()
    try:
        job = conn.recv()
    except EOFError:
        return  # the analysis ended without writing (an error, or the Python API)
    try:
        conn.send(("ok", _write(conn, *job)))
    except Exception:  # noqa: BLE001 (reported; the analysis writes the outputs itself)
        conn.send(("error", traceback.format_exc()))


def _write(conn, values, out_dir, figures, logs, compare, layer_figures):
    """Start the figures, write the table while they draw, then take the layer x layer pairs
    (computed meanwhile by the analysis) and add their figures; return the paths."""
    from pico_analyze import plots
    from pico_analyze.table import Row, write_table

    rows = [Row(*v) for v in values]
    out_dir.mkdir(parents=True, exist_ok=True)
    drawing = None
    if figures is not None:
        drawing = plots.start_figures(
            rows, out_dir, figures, logs, compare=compare, layer_figures_later=layer_figures
        )
    try:
        tables = write_table(rows, out_dir)
        pairs = conn.recv()
        if drawing is not None:
            plots.add_layer_figures(drawing, pairs, out_dir, figures)
    finally:  # the figure workers always finish (and are reaped), whatever happened here
        paths = drawing.paths() if drawing else []
    return tables, paths
