"""Loss in context: log, eval and benchmark scores become table rows; tokens_seen per step."""

import json
import math

import pytest

from pico_analyze import scores
from pico_analyze.sources.pico import PicoRun
from pico_format import RunFormatError, RunPaths, read_log


def test_score_rows_read_log_eval_and_benchmarks(scored_runs):
    narrow, _ = scored_runs
    source = PicoRun(narrow)
    rows, notes = scores.score_rows(source, [0, 4, 32])
    assert not notes
    by = {(r.metric, r.step): r for r in rows}
    # Training loss: the log record of the checkpoint's step; step 0 has no training step.
    assert ("train_loss", 0) not in by
    assert by[("train_loss", 4)].value == pytest.approx(5.0 - 0.4)
    assert by[("train_loss", 4)].split == "train" and by[("train_loss", 4)].layer == -1
    assert by[("eval_loss", 32)].value == pytest.approx(6.0 - 1.6)
    assert by[("eval_perplexity", 32)].value == pytest.approx(math.exp(6.0 - 1.6))
    bench = by[("arc_easy/acc", 4)]
    assert bench.kind == "benchmark" and bench.module == "arc_easy"
    assert bench.value == pytest.approx(0.29)
    assert ("arc_easy/acc_stderr", 4) in by
    assert by[("arc_easy/acc_stderr", 4)].value == pytest.approx(0.1)


def test_tokens_seen_from_log_and_from_config(scored_runs, tmp_path):
    narrow, _ = scored_runs
    assert scores.tokens_seen(PicoRun(narrow), [0, 4, 32]) == {0: 0, 4: 256, 32: 2048}
    # No log: step x global batch x sequence length from the resolved config.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(narrow, copy)
    RunPaths(copy).log.unlink()
    RunPaths(copy).config.write_text(
        "training: {global_batch_size: 4}\ndata: {seq_len: 16}\nmodel: {max_seq_len: 32}\n"
    )
    assert scores.tokens_seen(PicoRun(copy), [0, 8]) == {0: 0, 8: 8 * 4 * 16}
    rows, notes = scores.score_rows(PicoRun(copy), [0, 8])
    assert any("no training log" in n for n in notes)
    assert {r.metric for r in rows} >= {"eval_loss", "eval_perplexity"}


def test_runs_without_scores_say_why(pico_run, original_run):
    from pico_analyze.sources.original import OriginalRun

    rows, notes = scores.score_rows(PicoRun(pico_run), [0, 10])
    assert rows == [] and any("eval.json" in n for n in notes)
    rows, notes = scores.score_rows(OriginalRun(original_run), [0])
    assert rows == [] and "not a pico run directory" in notes[0]


def test_torn_log_line_and_bad_benchmarks_file(tmp_path, scored_runs):
    import shutil

    narrow, _ = scored_runs
    copy = tmp_path / "torn"
    shutil.copytree(narrow, copy)
    log = RunPaths(copy).log
    log.write_text(log.read_text() + '{"step": 99, "lo')
    assert read_log(log)[-1]["step"] == 32
    bench = RunPaths(copy).checkpoint(4).benchmarks
    bench.write_text(json.dumps({"tasks": {"arc_easy": {"acc": 0.3}}}))
    with pytest.raises(RunFormatError, match="expected the keys"):
        scores.score_rows(PicoRun(copy), [4])
