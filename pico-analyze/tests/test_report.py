"""The analysis outputs end to end: figures, report.md/report.html, the notebook API, README."""

import html.parser
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def compared(scored_runs, tmp_path_factory):
    """One comparison of two runs of different width, figures in PNG, SVG and PDF."""
    from pico_analyze import compare_runs

    out = tmp_path_factory.mktemp("compared")
    stale = out / "plots" / "stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    cfg = {
        "progress": False,
        "workers": 1,
        "figures": {"formats": ["png", "svg", "pdf"], "dpi": 60, "normalize_previous": True},
        "layer_similarity": {"permutations": 20},
    }
    return compare_runs(list(scored_runs), cfg, out)


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_compare_writes_a_fresh_figure_folder_in_every_format(compared):
    plots = compared.out_dir / "plots"
    assert not (plots / "stale.png").exists()  # an earlier analysis's figures are gone
    stems = {p.stem for p in compared.plots}
    assert {"loss", "cka@narrow", "effective_rank", "layer_cka_mlp.down_proj"} <= stems
    assert "arc_easy_acc" in stems or "arc_easy/acc" in {r.metric for r in compared.rows}
    for stem in stems:
        for fmt in ("png", "svg", "pdf"):
            assert (plots / f"{stem}.{fmt}").stat().st_size > 0
    png = (plots / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_hold_loss_benchmarks_and_tokens(compared):
    rows = compared.rows
    metrics = {r.metric for r in rows}
    assert {"train_loss", "eval_loss", "eval_perplexity", "arc_easy/acc"} <= metrics
    assert all(r.tokens_seen == r.step * 64 for r in rows)
    from pico_analyze.table import read_table

    back = read_table(compared.table_path)
    assert [r.tokens_seen for r in back] == [r.tokens_seen for r in rows]


def test_report_html_is_self_contained_and_every_image_resolves(compared):
    md, page = compared.report_paths
    assert md.name == "report.md" and page.name == "report.html"
    parser = _Images()
    parser.feed(page.read_text())
    assert len(parser.sources) == len({p.stem for p in compared.plots})
    for src in parser.sources:
        match = re.fullmatch(r"data:image/(png|svg\+xml);base64,([A-Za-z0-9+/=]+)", src)
        assert match, src[:60]
        import base64

        data = base64.b64decode(match.group(2), validate=True)
        assert data[:4] == b"\x89PNG" if match.group(1) == "png" else b"<svg" in data[:400]
    text = " ".join(parser.text)
    for needed in ("What was analysed", "narrow", "wide", "Summary", "Notes", "held-out loss"):
        assert needed in text
    # The Markdown report links files that exist.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text())
    assert links and all((compared.out_dir / link).is_file() for link in links)
    assert "| held-out loss | whole model (eval batch) |" in md.read_text()


def test_summary_table_is_first_to_last_checkpoint(compared, scored_runs, tmp_path):
    md = compared.report_paths[0].read_text()
    line = next(x for x in md.splitlines() if x.startswith("| held-out loss |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:2] == ["held-out loss", "whole model (eval batch)"]
    first, last = (float(x) for x in cells[2].split(" -> "))  # run 'narrow', steps 0 -> 32
    assert first == pytest.approx(6.0) and last == pytest.approx(6.0 - 1.6)
    assert md.index("| training loss |") < md.index("| effective rank |")  # loss first
    # One run: first and last step, their values and the change.
    from pico_analyze import analyze_run

    cfg = {
        "plots": False,
        "progress": False,
        "layer_similarity": {"enabled": False},
        "metrics": [
            {
                "metric": "frobenius_norm",
                "components": [{"type": "simple", "kind": "weights", "module": "mlp.down_proj"}],
            }
        ],
    }
    single = analyze_run(scored_runs[0], cfg, tmp_path / "one").report_paths[0].read_text()
    line = next(x for x in single.splitlines() if x.startswith("| held-out loss |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "0" and cells[4] == "32" and float(cells[6]) == pytest.approx(-1.6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(compared, tmp_path):
    page = tmp_path / "check.html"
    check = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.setAttribute('data-check',i.length+':'+"
        "i.filter(x=>x.complete&&x.naturalWidth>0).length);});</script></body>"
    )
    page.write_text(compared.report_paths[1].read_text().replace("</body>", check))
    out = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'data-check="(\d+):(\d+)"', out.stdout)
    assert match, out.stderr[-2000:]
    total, loaded = map(int, match.groups())
    assert total == len({p.stem for p in compared.plots}) and loaded == total


def test_labels_say_what_is_measured(compared):
    from pico_analyze import figure_style as fs

    row = next(r for r in compared.rows if r.metric == "cka@narrow")
    assert fs.metric_name(row) == "linear CKA (debiased)"
    assert fs.reference_text([row]) == "vs run narrow (same layer, same step)"
    assert fs.panel_title(row) == "activations of self_attn.v_proj (eval batch)"
    prev = next(r for r in compared.rows if r.metric == "relative_weight_change@previous")
    assert fs.reference_text([prev]) == "vs the previous checkpoint"
    assert fs.log_spaced([0, 1, 2, 4, 8, 16, 32]) and not fs.log_spaced(range(0, 400, 100))
    assert fs.spans_decades([1.0, 2e3]) and not fs.spans_decades([-1.0, 2e3])


def test_previous_metrics_normalised_by_step_gap():
    from pico_analyze.plots import per_step_rows
    from pico_analyze.table import Row

    row = Row("r", 8, None, "simple", "weights", "m", 0, None, "rwc@previous", "rwc", 4, None, 2.0)
    assert per_step_rows([row])[0].value == pytest.approx(0.5)
    cos = Row(
        "r",
        8,
        "eval",
        "simple",
        "gradients",
        "m",
        0,
        None,
        "gradient_cosine_similarity@previous",
        "gradient_cosine_similarity",
        4,
        None,
        0.9,
    )
    assert per_step_rows([cos])[0].value == pytest.approx(0.9)  # a similarity stays as it is


def test_notebook_api(compared, scored_runs):
    import pico_analyze as pa

    for name in ("run", "compare", "load_results", "load_log", "load_eval", "read_capture"):
        assert name in dir(pa) and getattr(pa, name).__doc__
    frame = pa.load_results(compared.out_dir)
    assert len(frame) == len(compared.rows)
    assert frame["tokens_seen"].dtype == "Int64" and frame["head"].dtype == "Int64"
    same = pa.load_results(compared.table_path)  # the CSV reads back the same
    assert (same["value"].fillna(-1) == frame["value"].fillna(-1)).all()
    assert same["split"].isna().sum() == frame["split"].isna().sum()
    log = pa.load_log(scored_runs[0])
    assert log["step"].iloc[-1] == 32 and "loss" in log
    ev = pa.load_eval(scored_runs[0])
    assert list(ev["step"]) == [0, 1, 2, 4, 8, 16, 32]
    assert math.isclose(ev["eval_perplexity"].iloc[0], math.exp(6.0))
    bench = pa.load_benchmarks(scored_runs[0])
    assert set(bench["metric"]) == {"acc"} and bench["limit"].iloc[0] == 16
    assert bench["stderr"].iloc[0] == pytest.approx(0.1)
    layers = pa.load_layer_similarity(compared.out_dir)
    assert {"run_a", "layer_a", "run_b", "layer_b", "cka", "p_value"} <= set(layers.columns)
    cap = pa.read_capture(scored_runs[0] / "checkpoints" / "step_00000032", "eval")
    assert cap.get("activations", "model.layers.0.mlp.down_proj").shape == (24, 32)


@pytest.mark.slow
def test_readme_notebook_example_runs(scored_runs, tmp_path, monkeypatch):
    """The README's notebook-style example, executed with its paths pointed at test runs."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import pico_analyze as pa\n.*?)```", text, re.S)
    assert block, "README has no `import pico_analyze as pa` example"
    code = block.group(1)
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "sweep"
    runs.mkdir(parents=True)
    shutil.copytree(scored_runs[0], runs / "demo-w32")
    shutil.copytree(scored_runs[1], runs / "demo")
    shutil.copytree(scored_runs[0], tmp_path / "runs" / "demo")
    code = code.replace("step_00000100", "step_00000032")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["df"] is not None


def test_tokens_on_the_x_axis_and_compare_default_folder(compared, scored_runs, tmp_path):
    from pico_analyze import compare_runs
    from pico_analyze import figure_style as fs
    from pico_analyze.config import FiguresConfig
    from pico_analyze.plots import plot_figures

    assert fs.count_text(4096) == "4.1k" and fs.count_text(2.6e6) == "2.6M"
    rows = [r for r in compared.rows if r.run == "narrow"]
    files = plot_figures(rows, tmp_path / "tok", FiguresConfig(x_axis="tokens", dpi=40))
    assert files and all(f.suffix == ".png" and f.stat().st_size > 0 for f in files)
    # compare's default output folder is under the first run, not the working directory.
    a, b = (shutil.copytree(r, tmp_path / r.name) for r in scored_runs)
    cfg = {
        "plots": False,
        "report": False,
        "progress": False,
        "layer_similarity": {"enabled": False},
    }
    result = compare_runs([a, b], {**cfg, "metrics": [], "compare": {"metrics": []}})
    assert result.out_dir == a / "analysis-compare" and result.table_path.is_file()


def test_cli_figure_options(pico_run, tmp_path):
    from click.testing import CliRunner

    from pico_analyze.cli import main

    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "layers: [0]\nlayer_similarity: {enabled: false}\nmetrics:\n  - metric: hoyer\n"
        "    components: [{type: simple, kind: weights, module: mlp.down_proj}]\n"
    )
    args = ["run", str(pico_run), "--config", str(cfg), "--no-progress", "--workers", "1"]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, [*args, "--out", str(out), "--format", "png,svg", "--dpi", "50"]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in (out / "plots").iterdir()} == {"hoyer.png", "hoyer.svg"}
    bad = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "bad"), "--format", "jpg"])
    assert bad.exit_code != 0 and "figures.formats: 'jpg' is not one of png, pdf, svg" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_heatmap_panels_share_outer_ticks_and_each_has_a_labelled_colour_bar():
    """Panels with the same layers and checkpoints: ticks and axis labels on the bottom panel
    of each column and the first of each row only; every panel keeps its own colour bar (its
    own scale: components differ in magnitude), labelled with the metric."""
    from pico_analyze import figure_style as fs
    from pico_analyze import plots
    from pico_analyze.config import FiguresConfig
    from pico_analyze.table import Row

    def panel(module: str, scale: float) -> list[Row]:
        return [
            Row("r", s, None, "simple", "weights", module, layer, None, "gini", "gini", None,
                None, scale * (1 + layer + s / 100))
            for s in (0, 100, 200)
            for layer in range(8)
        ]  # fmt: skip

    panels = [panel(f"m{i}", 10.0**i) for i in range(4)]  # 3 columns: 3 + 1 panels
    fig, axes = fs.figure(len(panels), colorbars=True)
    plots._heatmap_panels(axes, panels, FiguresConfig(), "Gini index")
    ticks = [(len(ax.get_xticks()) > 0, len(ax.get_yticks()) > 0) for ax in axes]
    # panel 0 has panel 3 below it; panels 1 and 2 have none; rows start at panels 0 and 3
    assert ticks == [(False, True), (True, False), (True, False), (True, True)]
    assert [ax.get_xlabel() != "" for ax in axes] == [False, True, True, True]
    assert [ax.get_ylabel() for ax in axes] == ["layer", "", "", "layer"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.draw_without_rendering()
    renderer = FigureCanvasAgg(fig).get_renderer()
    for i, (ax, rows) in enumerate(zip(axes, panels)):
        (label,) = [t for t in ax.texts if t.get_text() == "Gini index"]  # the colour bar's
        low, high = ax.images[0].get_clim()  # its own scale
        assert low == min(r.value for r in rows) and high == max(r.value for r in rows)
        right = max(t.get_window_extent(renderer).x1 for t in ax.texts)  # labels of the bar
        assert label.get_window_extent(renderer).x1 == right
        assert right < (axes[i + 1].bbox.x0 if i % 3 < 2 and i + 1 < 4 else fig.bbox.x1)
    # different checkpoints in one panel: every panel labels its own axes
    fig, axes = fs.figure(2, colorbars=True)
    plots._heatmap_panels(axes, [panels[0], panels[1][:16]], FiguresConfig(), "Gini index")
    assert all(len(ax.get_xticks()) and len(ax.get_yticks()) for ax in axes)


def test_loss_figure_takes_the_step_scale_of_the_checkpoints(tmp_path, monkeypatch):
    """Log-spaced checkpoints put every figure on a symlog step axis, the loss figure too,
    although the training log itself is evenly spaced; even checkpoints keep it linear."""
    from pico_analyze import figure_style as fs
    from pico_analyze import plots
    from pico_analyze.config import FiguresConfig
    from pico_analyze.table import Row

    def rows(steps):
        return [
            Row("r", s, None, "simple", "weights", "m", 0, None, "gini", "gini", None, None, 0.5)
            for s in steps
        ]

    log = {"r": [{"step": s, "loss": 8.0 - s / 20} for s in range(1, 65)]}
    scales = []
    monkeypatch.setattr(fs, "save", lambda fig, *a: scales.append(fig.axes[0].get_xscale()) or [])
    for steps in ([0, 1, 2, 4, 8, 16, 32, 64], [0, 20, 40, 60]):
        plots._loss_figure(tmp_path, rows(steps), log, FiguresConfig(), ["r"])
    assert scales == ["symlog", "linear"]
