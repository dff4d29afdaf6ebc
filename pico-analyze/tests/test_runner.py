"""The runner end to end through analyze_run / compare_runs: rows, guards, notes, loading."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pico_analyze import analyze_run, compare_runs
from pico_analyze.config import ConfigError
from pico_analyze.metrics import get_metric
from pico_analyze.metrics.registry import register_metric, unregister_metric
from pico_analyze.table import read_table

from synthetic_runs import make_pico_run

V_ACT = {"type": "simple", "kind": "activations", "module": "self_attn.v_proj"}
NO_PLOTS = {"plots": False, "progress": False}


def by(rows, **match):
    return [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]


def test_default_analysis_of_our_format(pico_run, tmp_path):
    result = analyze_run(pico_run, out_dir=tmp_path / "out", progress=False)
    rows = result.rows
    labels = {r.metric for r in rows}
    assert labels == {
        "cka@last",
        "effective_rank",
        "proportional_effective_rank",
        "condition_number",
        "gini",
        "hoyer",
        "frobenius_norm",
        "spectral_norm",
        "relative_weight_change@previous",
        "gradient_cosine_similarity@previous",
    }
    assert not result.notes, result.notes[:3]
    assert sorted(result.stats.loads) == [("tiny", 0), ("tiny", 10), ("tiny", 20)]  # once each
    for r in by(rows, metric="cka@last", step=20):
        assert r.value == pytest.approx(1.0) and r.reference == "step 20"
    assert {r.step for r in by(rows, metric="relative_weight_change@previous")} == {10, 20}
    assert {r.reference for r in by(rows, metric="relative_weight_change@previous", step=20)} == {
        "step 10"
    }
    ov = by(rows, metric="effective_rank", component="ov_circuit", step=0, layer=1)
    assert sorted(r.head for r in ov) == [0, 1, 2, 3]
    assert all(1 < r.value <= 8 + 1e-9 for r in ov)  # rank of M_h is at most head_dim
    assert {r.split for r in by(rows, metric="frobenius_norm", kind="gradients")} == {
        "train",
        "eval",
    }
    assert {r.split for r in by(rows, kind="weights")} == {None}
    # outputs
    assert result.table_path.name == "results.csv" and result.table_path.is_file()
    assert [p.suffix for p in result.table_paths] == [".csv", ".parquet"]
    assert len(read_table(result.table_path)) == len(rows)
    names = {p.name for p in result.plots}
    assert {f"{label}.png" for label in labels} <= names  # one figure per metric label
    assert "layer_cka_self_attn.v_proj.png" in names and all(p.is_file() for p in result.plots)
    text = result.summary()
    assert str(result.table_path) in text and "cka@last.png" in text
    assert (tmp_path / "out" / "summary.txt").is_file()
    assert (tmp_path / "out" / "config.yaml").is_file()


def test_train_split_comparison_across_steps_is_refused_unless_forced(pico_run, tmp_path):
    cfg = {
        **NO_PLOTS,
        "metrics": [
            {"metric": "cka", "components": [V_ACT], "splits": ["train"], "target": "previous"}
        ],
    }
    with pytest.raises(ConfigError, match="train.*different batch"):
        analyze_run(pico_run, cfg, tmp_path)
    rows = analyze_run(pico_run, cfg, tmp_path, force_train_split=True).rows
    assert rows and all(r.note.startswith("forced:") for r in rows)
    assert all(math.isfinite(r.value) for r in rows)


def test_failing_metric_is_a_note_and_the_rest_completes(pico_run, tmp_path):
    @register_metric("_fails_on_v_proj", comparative=False, kinds=("weights",))
    def fails_on_v_proj(x: torch.Tensor) -> float:
        if x.shape[0] == 16:  # the v_proj weight (n_kv_heads * head_dim, d)
            raise RuntimeError("boom")
        return float(x.abs().max())

    try:
        cfg = {
            **NO_PLOTS,
            "metrics": [
                {
                    "metric": "_fails_on_v_proj",
                    "components": [
                        {"type": "simple", "kind": "weights", "module": m}
                        for m in ("self_attn.v_proj", "self_attn.o_proj")
                    ],
                },
                {
                    "metric": "condition_number",  # OV per head has rank head_dim < d: infinite
                    "components": [{"type": "ov_circuit", "kind": "weights"}],
                },
                {
                    "metric": "effective_rank",
                    "components": [{"type": "ov_circuit", "kind": "weights"}],
                },
            ],
        }
        result = analyze_run(pico_run, cfg, tmp_path)
    finally:
        unregister_metric("_fails_on_v_proj")
    rows = result.rows
    failed = by(rows, metric="_fails_on_v_proj", module="self_attn.v_proj")
    assert len(failed) == 6 and all(math.isnan(r.value) and "boom" in r.note for r in failed)
    assert all(math.isfinite(r.value) for r in by(rows, module="self_attn.o_proj"))
    cond = by(rows, metric="condition_number")
    assert len(cond) == 3 * 2 * 4 and all("rank-deficient" in r.note for r in cond)
    assert all(math.isfinite(r.value) and not r.note for r in by(rows, metric="effective_rank"))
    assert "rank-deficient" in result.summary()


def test_same_metric_with_different_settings_never_overwrites(pico_run, tmp_path):
    cfg = {
        **NO_PLOTS,
        "steps": [0, 20],
        "layers": [1],
        "metrics": [
            {"metric": "cka", "components": [V_ACT]},
            {"metric": "cka", "components": [V_ACT], "settings": {"debiased": False}},
            {"metric": "cka", "name": "cka_first", "components": [V_ACT], "target": 0},
        ],
    }
    rows = analyze_run(pico_run, cfg, tmp_path).rows
    debiased = by(rows, metric="cka@last", step=0)
    biased = by(rows, metric="cka[debiased=False]@last", step=0)
    first = by(rows, metric="cka_first", step=20)
    assert len(debiased) == len(biased) == len(first) == 1
    assert debiased[0].value != pytest.approx(biased[0].value)
    assert first[0].reference == "step 0"
    assert {r.layer for r in rows} == {1} and {r.step for r in rows} == {0, 20}


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])
def test_shared_singular_values_and_workers_do_not_change_values(
    pico_run, tmp_path, monkeypatch, fork
):
    from pico_analyze import runner

    if fork and not runner._forks("cpu"):
        pytest.skip("workers are forked on Linux only")
    monkeypatch.setattr(runner, "_forks", lambda device: fork)
    cfg = {
        **NO_PLOTS,
        "metrics": [
            {
                "metric": m,
                "components": [{"type": "ov_circuit", "kind": "gradients", "heads": "both"}, V_ACT],
            }
            for m in ("effective_rank", "stable_rank", "nuclear_norm", "spectral_norm")
        ],
    }
    plain = analyze_run(pico_run, {**cfg, "share_singular_values": False}, tmp_path / "a")
    shared = analyze_run(pico_run, cfg, tmp_path / "b", workers=2)
    key = lambda r: (r.step, r.metric, r.component, r.module, r.layer, r.head or -1)  # noqa: E731
    a = sorted(plain.rows, key=key)
    b = sorted(shared.rows, key=key)
    assert [key(r) for r in a] == [key(r) for r in b]
    assert [r.value for r in a] == pytest.approx([r.value for r in b], rel=1e-12)
    assert len(shared.stats.loads) >= 3  # two chunks: the second also loads its previous step


def test_chunks_of_layers_give_one_process_rows_in_its_order(pico_run, tmp_path, monkeypatch):
    """Forked workers over chunks of layers (runs of different depth: a layer's cross-run
    comparison stays in one chunk) give the rows of one process, in its order, equal."""
    from pico_analyze import plan, runner

    if not runner._forks("cpu"):
        pytest.skip("chunks of layers are used where workers are forked (Linux)")
    deep = make_pico_run(tmp_path / "deep", layers=3, seed=1)
    ov = {"type": "ov_circuit", "kind": "weights", "heads": "both"}
    cfg = {
        **NO_PLOTS,
        "metrics": [
            {"metric": "cka", "components": [V_ACT], "target": "last"},
            {"metric": "relative_weight_change", "components": [ov], "target": "previous"},
            {"metric": "gini", "components": [ov, V_ACT]},
        ],
        "compare": {"metrics": [{"metric": "cka", "components": [V_ACT]}]},
    }
    one = compare_runs([pico_run, deep], cfg, tmp_path / "one", workers=1).rows
    chunked = []
    real = plan.layer_chunks
    monkeypatch.setattr(runner, "layer_chunks", lambda job, k: chunked.append(k) or real(job, k))
    two = compare_runs([pico_run, deep], cfg, tmp_path / "two", workers=2).rows
    assert chunked == [2]
    assert len(by(one, metric="cka@tiny")) == 3 * 2  # steps x the layers both runs have
    assert [dataclasses.astuple(r) for r in two] == [dataclasses.astuple(r) for r in one]


def test_original_layout_end_to_end(original_run, tmp_path):
    result = analyze_run(original_run, {"plots": False}, tmp_path, progress=False)
    rows = result.rows
    assert result.runs == ["demo-1"] and {r.step for r in rows} == {0, 10, 20}
    missing = [r for r in rows if r.note]
    assert missing and all(
        r.split == "train" and r.step == 20 and "not captured" in r.note for r in missing
    )
    measured = [r for r in rows if not r.note]
    assert all(math.isfinite(r.value) for r in measured)
    for r in by(rows, metric="cka@last", step=20):
        assert r.value == pytest.approx(1.0)
    assert by(rows, component="ov_circuit", metric="frobenius_norm", step=20)
    ov = analyze_run(
        original_run,
        {
            **NO_PLOTS,
            "metrics": [
                {
                    "metric": "cka",
                    "components": [
                        {"type": "ov_circuit", "kind": "activations", "heads": "concat"}
                    ],
                }
            ],
        },
        tmp_path / "ov",
    ).rows
    assert len(ov) == 3 * 2 and all(math.isfinite(r.value) for r in ov)


def test_compare_runs_of_different_width(pico_run, tmp_path):
    wide = make_pico_run(tmp_path / "wide", d=48, seed=1)
    result = compare_runs(
        [pico_run, wide],
        {
            "progress": False,
            "metrics": [{"metric": "effective_rank", "components": [V_ACT]}],
            "compare": {
                "metrics": [
                    {
                        "metric": "cka",
                        "components": [
                            V_ACT,
                            {"type": "ov_circuit", "kind": "activations", "heads": "concat"},
                        ],
                    },
                    {"metric": "procrustes", "components": [V_ACT]},
                ]
            },
        },
        tmp_path / "cmp",
    )
    assert result.runs == ["tiny", "wide"]
    cross = by(result.rows, metric="cka@tiny")
    assert len(cross) == 3 * 2 * 2  # steps x layers x components
    assert all(r.run == "wide" and r.reference == "run tiny" for r in cross)
    assert all(
        r.cross_run and r.reference_run == "tiny" and r.reference_step == r.step for r in cross
    )
    own = by(result.rows, metric="effective_rank")
    assert own and not any(r.cross_run or r.reference_run for r in own)
    assert all(math.isfinite(r.value) and -0.5 < r.value <= 1.0 for r in cross)
    assert len(by(result.rows, metric="procrustes@tiny")) == 6
    assert {r.run for r in by(result.rows, metric="effective_rank")} == {"tiny", "wide"}
    names = {p.name for p in result.plots}
    assert {"effective_rank.png", "cka@tiny.png", "layer_cka_self_attn.v_proj.png"} <= names
    assert "tiny, wide" in result.summary()


def test_wandb_logging_is_lazy_and_optional(pico_run, tmp_path, monkeypatch):
    import sys
    import types

    logged = {}

    class FakeRun:
        def log(self, data, step=None):
            logged.setdefault("steps" if step is not None else "other", []).append(data)

        def finish(self):
            logged["finished"] = True

    fake = types.SimpleNamespace(
        init=lambda **kw: logged.setdefault("init", kw) and FakeRun(),
        Table=lambda columns, data: ("table", len(data)),
        Image=lambda path: ("image", path),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = {
        **NO_PLOTS,
        "wandb": {"enabled": True, "project": "p"},
        "metrics": [{"metric": "gini", "components": [V_ACT]}],
    }
    result = analyze_run(pico_run, cfg, tmp_path)
    assert logged["init"]["project"] == "p" and logged["finished"]
    assert len(logged["steps"]) == 3  # one log call per checkpoint
    assert ("table", len(result.rows)) in [d.get("results") for d in logged["other"]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(pico_run, tmp_path):
    cfg = {
        **NO_PLOTS,
        "metrics": [
            {
                "metric": m,
                "components": [
                    V_ACT,
                    {"type": "ov_circuit", "kind": "activations", "heads": "both"},
                ],
            }
            for m in ("cka", "effective_rank", "gini")
        ],
    }
    cpu = analyze_run(pico_run, cfg, tmp_path / "cpu", device="cpu").rows
    gpu = analyze_run(pico_run, cfg, tmp_path / "gpu", device="auto").rows
    assert len(cpu) == len(gpu)
    assert [r.value for r in gpu] == pytest.approx([r.value for r in cpu], rel=1e-6, abs=1e-9)


def test_compare_refuses_runs_captured_on_different_batches(pico_run, tmp_path):
    other = make_pico_run(tmp_path / "other", steps=(0, 10), eval_seed=7)
    cfg = {
        **NO_PLOTS,
        "metrics": [],
        "compare": {"metrics": [{"metric": "cka", "components": [V_ACT]}]},
    }
    rows = compare_runs([pico_run, other], cfg, tmp_path / "cmp").rows
    assert len(rows) == 2 * 2  # common steps 0 and 10, two layers
    assert all(math.isnan(r.value) and "token ids differ" in r.note for r in rows)


def test_table_equals_a_direct_call_on_the_stored_tensor(tmp_path):
    """No upcast in between: rank tolerances documented for the stored dtype hold in the table."""
    from safetensors.torch import load_file, save_file

    from pico_analyze.load import LoadRequest
    from pico_analyze.metrics import MetricError, condition_number, effective_rank
    from pico_analyze.sources import open_source
    from pico_format import RunPaths
    from pico_format.modules import module_name

    run = make_pico_run(tmp_path / "run", steps=(0, 10))
    o_proj = module_name(0, "self_attn.o_proj")
    # float32 with singular values down to 1e-8 of the largest: rank-deficient at float32's
    # tolerance (32 * 1.2e-7), full rank with a finite condition number at float64's
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -8, 32, dtype=torch.float64)
    stored = ((u * s) @ v.T).float()
    with pytest.raises(MetricError, match="rank-deficient"):
        condition_number(stored)
    assert math.isfinite(condition_number(stored.double()))  # what an upcast would have shown
    assert effective_rank(stored.double()) != effective_rank(stored)
    for step in (0, 10):
        for split in ("train", "eval"):
            path = RunPaths(run).checkpoint(step).capture_file(split, "weights")
            tensors = load_file(path)
            tensors[o_proj] = stored
            save_file(tensors, path)
    weights = {"type": "simple", "kind": "weights", "module": "self_attn.o_proj"}
    cfg = {
        **NO_PLOTS,
        "metrics": [
            {"metric": m, "components": [weights]}
            for m in ("condition_number", "effective_rank", "gini", "frobenius_norm")
        ],
    }
    rows = analyze_run(run, cfg, tmp_path / "out", workers=1).rows
    cond = by(rows, metric="condition_number", layer=0)
    assert len(cond) == 2 and all(math.isnan(r.value) for r in cond)
    assert all("rank-deficient" in r.note for r in cond)
    for r in by(rows, metric="effective_rank", layer=0):
        assert r.value == effective_rank(stored)  # equal, not approximately
    req = LoadRequest()
    req.add("weights", module_name(1, "self_attn.o_proj"))
    tensor = open_source(run).load(10, req).tensor("weights", module_name(1, "self_attn.o_proj"))
    for r in by(rows, step=10, layer=1):
        assert tensor.dtype == torch.float32
        direct = get_metric(r.function).fn(tensor)
        assert r.value == direct, (r.metric, r.value, direct)


def test_worker_plan_never_oversubscribes_the_cores():
    from pico_analyze.plan import worker_plan

    for budget in (1, 2, 4, 16):
        for requested in (1, 2, 3, 8, 64):
            workers, threads = worker_plan(requested, budget)
            assert 1 <= workers <= requested and workers * threads <= budget
            assert workers == min(requested, budget)


def test_forking_helpers_leave_the_garbage_collector_as_they_found_it():
    import gc

    from pico_analyze.forking import collector_paused, frozen_objects

    assert gc.get_freeze_count() == 0
    with frozen_objects():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # frozen by the caller: stays frozen
    try:
        with frozen_objects():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # the caller's setting is kept
    finally:
        gc.enable()
