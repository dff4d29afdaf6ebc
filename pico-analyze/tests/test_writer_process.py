"""The writer process of ``pico-analyze run|compare`` (pico_analyze.writer_process): it imports
no torch, writes the same files as the analysis's own process, and a failed one is replaced by
the analysis writing them itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks (Linux)")

ROWS = """
from pico_analyze.table import Row
rows = [
    Row("r", step, None, "simple", "weights", "self_attn.v_proj", layer, None, "gini", "gini",
        None, None, 0.1 * layer + 0.01 * step + 0.3, "", 1000 * step)
    for step in (0, 10, 20) for layer in range(8)
]
"""


def _python(code: str, tmp_path) -> dict:
    """Run `code` in a fresh interpreter (torch not yet imported); its last stdout line, JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_writer_process_imports_no_torch(tmp_path):
    got = _python(
        """
        import json, sys
        from pico_analyze import writer_process
        writer_process._preload()
        print(json.dumps({"torch": "torch" in sys.modules, "mpl": "matplotlib" in sys.modules}))
        """,
        tmp_path,
    )
    assert got == {"torch": False, "mpl": True}


def test_the_writer_process_writes_what_the_analysis_would(tmp_path):
    got = _python(
        ROWS
        + """
import json, sys
from pathlib import Path
from pico_analyze import writer_process
from pico_analyze.figure_options import FiguresConfig
writer_process.prestart()
writer = writer_process.take()
assert writer is not None and writer_process.take() is None
assert writer.submit(rows, Path("by-writer"), FiguresConfig(), {}, False, 0)
assert writer.send_pairs([])
tables, plots = writer.result()
print(json.dumps({"tables": [str(p) for p in tables], "plots": [str(p) for p in plots],
                  "torch here": "torch" in sys.modules}))
""",
        tmp_path,
    )
    assert not got["torch here"]  # nothing in this process needed it either
    from pico_analyze.analyze import _write_outputs
    from pico_analyze.figure_options import FiguresConfig

    scope: dict = {}
    exec(ROWS, scope)
    here = tmp_path / "here"
    here.mkdir()
    tables, plots = _write_outputs(scope["rows"], here, FiguresConfig(), {}, [], False)
    assert [p.name for p in tables] == [os.path.basename(p) for p in got["tables"]]
    assert [p.name for p in plots] == [os.path.basename(p) for p in got["plots"]] == ["gini.png"]
    for a, b in zip(tables + plots, got["tables"] + got["plots"]):
        assert a.read_bytes() == (tmp_path / b).read_bytes(), a.name


def test_a_failed_writer_process_leaves_the_writing_to_the_analysis(tmp_path):
    got = _python(
        ROWS
        + """
import json, os, signal
from pathlib import Path
from pico_analyze import writer_process
writer_process.prestart()
writer = writer_process.take()
os.kill(writer.pid, signal.SIGKILL)
os.waitpid(writer.pid, 0)
sent = writer.submit(rows, Path("out"), None, {}, False, 0) and writer.send_pairs([])
print(json.dumps({"sent": sent, "result": writer.result()}))
""",
        tmp_path,
    )
    assert got["result"] is None  # the caller then writes the outputs itself


def test_the_command_hands_its_outputs_to_the_writer_process(pico_run, tmp_path):
    """`python -m pico_analyze run` (the pico-analyze command) with figures: the writer process
    wrote them (no fallback was logged) and the files are those of an in-process analysis."""
    cfg = tmp_path / "analysis.yaml"
    cfg.write_text(
        "layers: [0, 1]\nmetrics:\n  - metric: hoyer\n    components:\n"
        "      - {type: ov_circuit, kind: weights, heads: both}\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "pico_analyze", "-v", "run", str(pico_run), "--config"]
    done = subprocess.run(
        [*cmd, str(cfg), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "writer process failed" not in done.stderr
    from pico_analyze.analyze import analyze_run

    here = analyze_run(pico_run, str(cfg), tmp_path / "here", progress=False)
    assert (out / "results.csv").read_bytes() == here.table_path.read_bytes()
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(p.name for p in here.plots)
    for p in here.plots:
        assert (out / "plots" / p.name).read_bytes() == p.read_bytes(), p.name


def test_prestart_does_nothing_once_torch_is_imported():
    import torch  # noqa: F401

    from pico_analyze import writer_process

    writer_process.prestart()
    assert writer_process.take() is None


def _figure_job(path):
    path.write_text(path.name)
    return [path]


def test_figure_jobs_added_later_are_drawn_after_the_first_in_order(tmp_path):
    """figure_style.Rendering.add (the layer x layer figures come after the metric figures):
    with forked workers (enough jobs for two on two cores) and without; the paths stay in job
    order whatever order the weights start the jobs in."""
    from pico_analyze import figure_style as fs

    for first, later in ((6, 3), (1, 1)):
        jobs = [(_figure_job, (tmp_path / f"a{i}",)) for i in range(first)]
        drawing = fs.start(jobs, more=later, weights=list(range(first)))  # last job first
        drawing.add([(_figure_job, (tmp_path / f"b{i}",)) for i in range(later)])
        names = [p.name for p in drawing.paths()]
        assert names == [f"a{i}" for i in range(first)] + [f"b{i}" for i in range(later)]
        assert all((tmp_path / n).read_text() == n for n in names)
