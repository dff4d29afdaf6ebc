"""Shared singular values: the fast routes equal torch.linalg.svdvals; the memo is exact."""

from __future__ import annotations

import pytest
import torch

from pico_analyze.metrics import effective_rank, nuclear_norm, stable_rank
from pico_analyze.metrics import singular_values as sv
from pico_analyze.metrics.singular_values import (
    SharedSingularValues,
    concat_singular_values,
    low_rank_singular_values,
    reduced_singular_values,
)


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("m,r,n", [(24, 4, 24), (10, 4, 24), (24, 8, 6)])
def test_concat_singular_values_match_the_heads_side_by_side(m, r, n):
    heads = 6
    a, b = rand(heads, m, r, seed=3), rand(heads, r, n, seed=4)
    concat = torch.cat([a[h] @ b[h] for h in range(heads)], dim=1)  # [a_1 b_1 | ... | a_H b_H]
    s = concat_singular_values(a, b)
    assert s.shape == (min(m, heads * n),)
    torch.testing.assert_close(s, torch.linalg.svdvals(concat), atol=1e-11, rtol=1e-10)


def test_finiteness_is_checked_once_per_tensor_inside_the_context():
    from pico_analyze.metrics import MetricError, frobenius_norm

    x = rand(5, 5, seed=5)
    with SharedSingularValues():
        frobenius_norm(x)
        x[0, 0] = float("nan")  # an in-place change bumps the version: checked again
        with pytest.raises(MetricError, match="non-finite"):
            frobenius_norm(x)
        with pytest.raises(MetricError, match="non-finite"):
            frobenius_norm(x)  # a tensor that failed is never recorded as finite


def test_low_rank_singular_values_match_the_product():
    a, b = rand(3, 40, 6, seed=1), rand(3, 6, 50, seed=2)
    s = low_rank_singular_values(a, b)
    assert s.shape == (3, 40)
    torch.testing.assert_close(s, torch.linalg.svdvals(a @ b), atol=1e-12, rtol=1e-10)
    assert torch.all(s[:, 6:] == 0)  # exact zeros beyond the rank


@pytest.mark.parametrize("shape", [(30, 200), (200, 30), (40, 50)])
def test_reduced_singular_values(shape):
    x = rand(*shape, seed=3)
    torch.testing.assert_close(reduced_singular_values(x), torch.linalg.svdvals(x))


def test_memo_serves_one_decomposition_per_tensor(monkeypatch):
    x = rand(20, 30, seed=4)
    expected = (effective_rank(x), stable_rank(x), nuclear_norm(x))
    calls = []
    real = sv.reduced_singular_values
    monkeypatch.setattr(sv, "reduced_singular_values", lambda a: calls.append(a.shape) or real(a))
    with SharedSingularValues() as svd:
        got = (effective_rank(x), stable_rank(x), nuclear_norm(x))
        assert len(svd.memo) == 1 and len(calls) == 1  # one SVD for three metrics
        x.mul_(2.0)  # an in-place change bumps the version: the memo must not answer
        assert nuclear_norm(x) == pytest.approx(2 * expected[2])
        assert len(calls) == 2
    assert got == pytest.approx(expected, rel=1e-12)
    assert sv._ACTIVE.get() is None  # the memo ends with the block


def test_primed_values_are_used():
    a, b = rand(16, 4, seed=5), rand(4, 16, seed=6)
    m = a @ b
    with SharedSingularValues() as svd:
        svd.prime(m, low_rank_singular_values(a, b))
        assert effective_rank(m) == pytest.approx(effective_rank(a @ b), rel=1e-10)
        assert sv.singular_values(m)[4:].eq(0).all()


def test_per_tensor_results_are_reused_only_for_the_same_unchanged_tensor():
    import gc

    from pico_analyze.metrics import cka, pwcca

    ref, cur = rand(60, 5, seed=6), rand(60, 5, seed=7)
    plain = [cka(ref, cur), pwcca(ref, cur), cka(ref, cur, debiased=False)]
    shared = SharedSingularValues()
    with shared:
        shared.pin(ref)  # the runner pins reference tensors; nothing is kept for others
        for _ in range(2):  # the second round reuses the reference's centred basis and Gram
            assert [cka(ref, cur), pwcca(ref, cur), cka(ref, cur, debiased=False)] == plain
        remembered = len(shared.derived)
        assert remembered and all(k[0] == id(ref) for k in shared.derived)
        ref.mul_(-2.0).add_(1.0)  # in place: a new version, so recomputed (CKA is invariant)
        again = [cka(ref, cur), pwcca(ref, cur), cka(ref, cur, debiased=False)]
        assert again == pytest.approx(plain, abs=1e-12)
        mine = [v for k, v in shared.derived.items() if k[0] == id(ref)]
        assert len(shared.derived) == remembered and mine  # replaced, not added
        assert all(version == ref._version for _, version, _ in mine)
        shared.clear()  # as the runner does after each matrix (the finiteness memo holds cur)
        del cur
        gc.collect()  # entries of a freed tensor are dropped with it
        assert shared.derived and all(
            ref_ is not None and ref_() is ref for ref_, *_ in (shared.derived.values())
        )
    assert not shared.derived
