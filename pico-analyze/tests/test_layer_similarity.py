"""Layer x layer CKA with a permutation null; compare's up-front data check."""

import math

import pytest
import torch

from pico_analyze.config import load_config
from pico_analyze.layer_similarity import layer_similarity
from pico_analyze.metrics.similarity import cka
from pico_analyze.metrics.similarity_null import cka_permutation_test
from pico_analyze.preflight import compare_warnings
from pico_analyze.sources.pico import PicoRun
from pico_format import RunInfo, RunPaths, read_run_info, write_run_info


def _pair(seed=0, n=64, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g, dtype=torch.float64)
    y = x @ torch.randn(20, 30, generator=g, dtype=torch.float64)
    return x, y + noise * torch.randn(n, 30, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("debiased", [True, False])
def test_permutation_value_equals_cka_and_related_inputs_beat_the_null(debiased):
    x, y = _pair()
    r = cka_permutation_test(x, y, n_permutations=200, debiased=debiased)
    assert r.value == pytest.approx(cka(x, y, debiased=debiased), rel=1e-10)
    assert r.p_value == pytest.approx(1 / 201)  # no shuffle reaches a strong dependence
    assert r.null_low <= r.null_mean <= r.null_high < r.value


def test_null_is_centred_near_zero_when_debiased_and_inflated_when_biased():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 200, generator=g, dtype=torch.float64)
    y = torch.randn(32, 200, generator=g, dtype=torch.float64)  # independent, p >> n
    deb = cka_permutation_test(x, y, n_permutations=300)
    biased = cka_permutation_test(x, y, n_permutations=300, debiased=False)
    assert abs(deb.null_mean) < 0.02 and deb.null_low < 0 < deb.null_high
    assert biased.null_mean > 0.5  # biased CKA of unrelated wide inputs is far from 0
    assert deb.p_value > 0.01 and biased.p_value > 0.01


def test_null_matches_an_explicit_shuffle_loop():
    x, y = _pair(seed=3, n=16, noise=3.0)
    r = cka_permutation_test(x, y, n_permutations=50, seed=7)
    g = torch.Generator().manual_seed(7)
    null = torch.tensor([cka(x, y[torch.randperm(16, generator=g)]) for _ in range(50)])
    assert r.null_mean == pytest.approx(float(null.mean()), abs=1e-9)
    assert r.p_value == pytest.approx((1 + int((null >= r.value).sum())) / 51)


def test_layer_matrices_within_and_across_runs_of_different_depth(tmp_path):
    from synthetic_runs import make_pico_run

    a = PicoRun(make_pico_run(tmp_path / "a", steps=(0, 10)))
    b = PicoRun(make_pico_run(tmp_path / "b", steps=(0, 10), d=48))
    cfg = load_config({"layer_similarity": {"permutations": 20}})
    pairs = layer_similarity([a, b], {"a": [0, 10], "b": [0, 10]}, cfg, cross=True)
    within = [p for p in pairs if p.within and p.run_a == "a" and p.module == "mlp.down_proj"]
    assert {(p.layer_a, p.layer_b) for p in within} == {(0, 0), (0, 1), (1, 1)}
    assert all(p.step == 10 for p in within)  # 'last'
    assert all(math.isnan(p.p_value) for p in within)  # the null is drawn for cross-run pairs
    diag = [p for p in within if p.layer_a == p.layer_b]
    assert all(p.cka == pytest.approx(1.0) for p in diag)
    across = [p for p in pairs if not p.within and p.step == 10 and p.module == "mlp.down_proj"]
    assert {(p.layer_a, p.layer_b) for p in across} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(math.isfinite(p.cka) and math.isfinite(p.p_value) for p in across)
    # Earlier shared steps: the same-index pairs only (the null band under the curves).
    early = [p for p in pairs if not p.within and p.step == 0]
    assert early and all(p.layer_a == p.layer_b for p in early)
    # An independent check of one value.
    ca, cb = a.load(10, _request(), "cpu"), b.load(10, _request(), "cpu")
    name = "model.layers.1.mlp.down_proj"
    x, y = ca.tensor("activations", name, "eval"), cb.tensor("activations", name, "eval")
    cell = next(p for p in across if p.layer_a == 1 and p.layer_b == 1)
    assert cell.cka == pytest.approx(cka(x, y))


def _request():
    from pico_analyze.load import LoadRequest

    req = LoadRequest()
    for layer in (0, 1):
        req.add("activations", f"model.layers.{layer}.mlp.down_proj", "eval")
    return req


def test_compare_warns_about_different_data_naming_what_differs(tmp_path, caplog):
    from synthetic_runs import make_pico_run

    a = make_pico_run(tmp_path / "a", steps=(0, 10))
    b = make_pico_run(tmp_path / "b", steps=(0, 10, 20), eval_seed=99)
    (RunPaths(a).config).write_text("data: {seq_len: 8, seed: 0}\n")
    (RunPaths(b).config).write_text("data: {seq_len: 8, seed: 5}\n")
    info = read_run_info(RunPaths(b))
    write_run_info(RunPaths(b), RunInfo(**{**info.__dict__, "data_fingerprint": "other"}))
    lines = compare_warnings([PicoRun(a), PicoRun(b)])
    assert "different data" in lines[0] and "data.seed: 0 vs 5" in lines[0]
    assert any("steps differ" in line and "b: [20]" in line for line in lines)
    from pico_analyze import compare_runs

    with caplog.at_level("WARNING", logger="pico_analyze"):
        result = compare_runs(
            [a, b], {"plots": False, "report": False, "progress": False}, tmp_path / "cmp"
        )
    assert "different data" in caplog.records[0].getMessage()  # before any other message
    cross = [r for r in result.rows if (r.reference or "").startswith("run ")]
    assert cross and all(math.isnan(r.value) for r in cross)
    note = cross[0].note
    assert "token ids differ" in note and "--force-train-split" not in note
    assert result.warnings[0].startswith("runs 'a' and 'b'")
