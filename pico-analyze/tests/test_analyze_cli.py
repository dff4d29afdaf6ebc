"""The pico-analyze command line (click's test runner, in process)."""

from __future__ import annotations

from click.testing import CliRunner

from pico_analyze.cli import main


def test_metrics_lists_the_registry():
    result = CliRunner().invoke(main, ["metrics"])
    assert result.exit_code == 0
    assert "cka" in result.output and "comparative" in result.output
    assert "effective_rank" in result.output


def test_run_with_config_prints_where_results_are(pico_run, tmp_path):
    cfg = tmp_path / "analysis.yaml"
    cfg.write_text(
        "layers: [0]\nmetrics:\n  - metric: hoyer\n    components:\n"
        "      - {type: ov_circuit, kind: weights, heads: concat}\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(pico_run),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"Table: {out / 'results.csv'}" in result.output
    assert "hoyer.png" in result.output and (out / "plots" / "hoyer.png").is_file()
    assert (out / "report.html").is_file() and (out / "report.md").is_file()


def test_run_errors_are_one_message(pico_run, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("metrics:\n  - metric: cka\n    components: [x]\n    taget: last\n")
    result = CliRunner().invoke(main, ["run", str(pico_run), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "unknown key 'taget'" in result.output and "Did you mean 'target'" in result.output
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_compare_command(pico_run, original_run, tmp_path):
    cfg = tmp_path / "cmp.yaml"
    cfg.write_text(
        "metrics:\n  - metric: frobenius_norm\n    components:\n"
        "      - {type: simple, kind: weights, module: mlp.down_proj}\n"
    )
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        main,
        [
            "compare",
            str(pico_run),
            str(original_run),
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 runs (tiny, demo-1)" in result.output
    assert "cka@tiny" in result.output  # cross-run similarity on the shared eval batch
    assert (out / "results.parquet").is_file()


def test_metric_descriptions_are_whole_sentences():
    from pico_analyze.metrics import get_metric, list_metrics

    for name in list_metrics():
        text = get_metric(name).description
        assert text.endswith((".", ")", ".)")), (name, text)
        assert text.count('"') % 2 == 0, (name, text)


def test_the_command_entry_point_keeps_exit_statuses_and_output(tmp_path):
    """`python -m pico_analyze` (the installed `pico-analyze`) ends without the interpreter's
    teardown: its output is still complete and its exit statuses are click's."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def command(*args):
        return subprocess.run(
            [sys.executable, "-m", "pico_analyze", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    listed = command("metrics")
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1].strip()
    assert len(listed.stdout.splitlines()) >= 10 and "cka" in listed.stdout
    bad = command("run", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "no such run directory" in bad.stderr
    assert command("--version").stdout.startswith("pico-analyze, version")
    assert command("no-such-command").returncode == 2
