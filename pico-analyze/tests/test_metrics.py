"""Tests of pico_analyze.metrics: mathematical properties and independent numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pico_analyze import metrics as M
from pico_analyze.metrics import MetricError

# --------------------------------------------------------------------------------------------
# helpers and independent float64 numpy references
# --------------------------------------------------------------------------------------------


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def random_orthogonal(p: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(p, p, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def np_cka_biased(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC_0 = tr(K H L H) / (n-1)^2 with the explicit centering matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, l_):
        return np.trace(k @ h @ l_ @ h) / (n - 1) ** 2

    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def np_cka_unbiased_ustat(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. 2012 HSIC_1 as its defining U-statistic: the mean over ordered quadruples of
    distinct indices (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq (brute force, small n)."""
    n = x.shape[0]
    idx = np.arange(n)
    i, j, q, r = np.meshgrid(idx, idx, idx, idx, indexing="ij")
    mask = (i != j) & (i != q) & (i != r) & (j != q) & (j != r) & (q != r)
    mask = mask.astype(np.float64)

    def hsic(k, l_):
        t1 = np.einsum("ij,ij,ijqr->", k, l_, mask)
        t2 = np.einsum("ij,qr,ijqr->", k, l_, mask)
        t3 = np.einsum("ij,iq,ijqr->", k, l_, mask)
        return (t1 + t2 - 2 * t3) / mask.sum()

    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)) @ v.T


def np_cca(x: np.ndarray, y: np.ndarray):
    """Textbook CCA: singular values of Sxx^{-1/2} Sxy Syy^{-1/2}; also x's canonical variates."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx_is, syy_is = _inv_sqrt(xc.T @ xc), _inv_sqrt(yc.T @ yc)
    u, s, _ = np.linalg.svd(sxx_is @ (xc.T @ yc) @ syy_is, full_matrices=False)
    variates = xc @ (sxx_is @ u)  # (n, c)
    return s, variates, xc


def np_svcca(x: np.ndarray, y: np.ndarray, keep: float) -> float:
    def reduce(a):
        ac = a - a.mean(0)
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.argmax(frac >= keep - 1e-12)) + 1
        return u[:, :k] * s[:k]

    rho, _, _ = np_cca(reduce(x), reduce(y))
    return float(rho.mean())


def np_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    rho, h, xc = np_cca(x, y)
    h = h / np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ xc).sum(1)
    return float((alpha * rho).sum() / alpha.sum())


def correlated_pair(n: int, p1: int, p2: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related representations: y is a noisy linear read-out of x."""
    x = randn(n, p1, seed=seed) @ torch.diag(torch.linspace(0.5, 3.0, p1, dtype=torch.float64))
    y = x @ randn(p1, p2, seed=seed + 1) + 2.0 * randn(n, p2, seed=seed + 2)
    return x + 1.5, y - 0.7


# --------------------------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize("method", ["gram", "feature"])
def test_cka_self_is_one(debiased, method):
    x = randn(40, 12, seed=0)
    assert M.cka(x, x, debiased=debiased, method=method) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_invariances(debiased):
    x, y = correlated_pair(60, 10, 7, seed=1)
    ref = M.cka(x, y, debiased=debiased)
    qx, qy = random_orthogonal(10, 5), random_orthogonal(7, 6)
    assert M.cka(x @ qx, y, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert M.cka(x, y @ qy, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert M.cka(3.7 * x, 0.01 * y, debiased=debiased) == pytest.approx(ref, abs=1e-10)
    assert M.cka(x + 100.0, y - 5.0, debiased=debiased) == pytest.approx(ref, abs=1e-9)
    assert M.cka(y, x, debiased=debiased) == pytest.approx(ref, abs=1e-12)  # symmetric
    assert 0.2 < ref < 1.0


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize("shape", [(30, 5, 80), (200, 16, 9), (12, 40, 40)])
def test_cka_gram_and_feature_paths_agree(debiased, shape):
    n, p1, p2 = shape
    x, y = correlated_pair(n, p1, p2, seed=2)
    gram = M.cka(x, y, debiased=debiased, method="gram")
    feature = M.cka(x, y, debiased=debiased, method="feature")
    auto = M.cka(x, y, debiased=debiased)
    assert gram == pytest.approx(feature, abs=1e-10)
    assert auto == pytest.approx(gram, abs=1e-10)


def test_cka_against_numpy_references():
    x, y = correlated_pair(25, 6, 4, seed=3)
    xn, yn = x.numpy(), y.numpy()
    assert M.cka(x, y, debiased=False) == pytest.approx(np_cka_biased(xn, yn), abs=1e-12)
    # Unbiased estimator against its defining U-statistic, on uncentered data (small n).
    xs, ys = x[:8], y[:8]
    ref = np_cka_unbiased_ustat(xs.numpy(), ys.numpy())
    for method in ("gram", "feature"):
        assert M.cka(xs, ys, method=method) == pytest.approx(ref, abs=1e-9)


def test_debiased_cka_removes_high_dimensional_bias():
    vals_unbiased, vals_biased = [], []
    for seed in range(3):
        x, y = randn(64, 512, seed=10 + seed), randn(64, 512, seed=20 + seed)
        vals_unbiased.append(M.cka(x, y))
        vals_biased.append(M.cka(x, y, debiased=False))
    assert all(abs(v) < 0.05 for v in vals_unbiased), vals_unbiased
    assert all(v > 0.5 for v in vals_biased), vals_biased


def test_cka_input_checks():
    x = randn(20, 4, seed=0)
    with pytest.raises(MetricError, match="same number of rows"):
        M.cka(x, randn(21, 4, seed=1))
    with pytest.raises(MetricError, match="at least 4 samples"):
        M.cka(x[:3], x[:3])
    assert M.cka(x[:3], x[:3], debiased=False) == pytest.approx(1.0)
    with pytest.raises(MetricError, match="zero variance"):
        M.cka(x, torch.full((20, 3), 0.1, dtype=torch.float64))
    with pytest.raises(MetricError, match="2-D"):
        M.cka(x.reshape(4, 5, 4), x)
    with pytest.raises(MetricError, match="method"):
        M.cka(x, x, method="fast")


# --------------------------------------------------------------------------------------------
# CCA family
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p1,p2", [(10, 10), (20, 12), (15, 18)])
def test_svcca_and_pwcca_against_numpy(p1, p2):
    x, y = correlated_pair(500, p1, p2, seed=4)
    xn, yn = x.numpy(), y.numpy()
    rho_ref, _, _ = np_cca(xn, yn)
    rho = M.canonical_correlations(x, y)
    np.testing.assert_allclose(rho.numpy(), rho_ref, atol=1e-10)
    for keep in (0.99, 0.9, 1.0):
        assert M.svcca(x, y, variance_kept=keep) == pytest.approx(np_svcca(xn, yn, keep), abs=1e-10)
    assert M.pwcca(x, y) == pytest.approx(np_pwcca(xn, yn), abs=1e-10)
    assert 0.0 < M.pwcca(x, y) < 1.0 and 0.0 < M.svcca(x, y) < 1.0


def test_cca_of_invertible_linear_transform_is_one():
    x = randn(300, 12, seed=5)
    a = randn(12, 12, seed=6) + 4.0 * torch.eye(12, dtype=torch.float64)
    y = x @ a + 3.0
    assert M.canonical_correlations(x, y).numpy() == pytest.approx(np.ones(12), abs=1e-10)
    assert M.pwcca(x, y) == pytest.approx(1.0, abs=1e-10)
    assert M.pwcca(y, x) == pytest.approx(1.0, abs=1e-10)
    assert M.svcca(x, y, variance_kept=1.0) == pytest.approx(1.0, abs=1e-10)


def test_cca_rank_deficient_input_uses_tolerance():
    x = randn(200, 8, seed=7)
    dup = torch.cat([x, x[:, :3] * 2.0 - x[:, 3:6]], dim=1)  # 11 columns, rank 8
    rho = M.canonical_correlations(dup, x)
    assert rho.shape == (8,)
    assert rho.numpy() == pytest.approx(np.ones(8), abs=1e-10)
    assert M.pwcca(dup, x) == pytest.approx(1.0, abs=1e-10)
    assert math.isfinite(M.svcca(dup, randn(200, 5, seed=8)))


@pytest.mark.parametrize("metric", [M.svcca, M.pwcca, M.canonical_correlations])
@pytest.mark.parametrize("n,p", [(30, 30), (30, 29), (20, 64)])
def test_cca_family_refuses_too_many_features(metric, n, p):
    x, y = randn(n, p, seed=9), randn(n, 5, seed=10)
    with pytest.raises(MetricError, match="fewer features than samples"):
        metric(x, y)
    with pytest.raises(MetricError, match="fewer features than samples"):
        metric(y, x)


@pytest.mark.parametrize("metric", [M.svcca, M.pwcca, M.canonical_correlations])
def test_cca_family_refuses_subspaces_that_must_intersect(metric):
    """n samples span n - 1 centred dimensions: subspaces of p_x + p_y > n - 1 dimensions share
    at least p_x + p_y - (n - 1) directions, each a canonical correlation of 1 for any data."""
    n, p = 20, 10  # each width passes (10 <= n - 2); together 20 > 19
    x, y = randn(n, p, seed=40), randn(n, p, seed=41)  # independent noise
    qx = torch.linalg.svd(x - x.mean(0), full_matrices=False).U
    qy = torch.linalg.svd(y - y.mean(0), full_matrices=False).U
    rho = torch.linalg.svdvals(qx.T @ qy)  # what CCA would report: the closed form's trivial 1
    assert int((rho > 1 - 1e-10).sum()) == p + p - (n - 1) == 1
    with pytest.raises(MetricError, match=r"at least 1 canonical correlation is 1 for any data"):
        metric(x, y)
    with pytest.raises(MetricError, match=r"Use at least 21 samples"):
        metric(y, x)
    ok = metric(x[:, :9], y[:, :9]) if metric is not M.canonical_correlations else None
    assert ok is None or 0.0 <= ok < 1.0  # 9 + 9 = 18 <= 19: allowed


def test_pwcca_in_the_refused_regime_depended_on_column_order():
    """Why it is refused: the weights of the forced-1 directions depend on the basis chosen
    inside the intersection, so PWCCA changed with a column permutation of y."""
    n, p = 20, 12
    x, y = randn(n, p, seed=42), randn(n, p, seed=43)
    perm = torch.randperm(p, generator=torch.Generator().manual_seed(0))
    unchecked = [np_pwcca(x.numpy(), y.numpy()), np_pwcca(x.numpy(), y[:, perm].numpy())]
    assert abs(unchecked[0] - unchecked[1]) > 1e-4  # the formula itself, without the check
    for ys in (y, y[:, perm]):
        with pytest.raises(MetricError, match="canonical correlations are 1 for any data"):
            M.pwcca(x, ys)


def test_svcca_checks_the_reduced_dimensions():
    """SVCCA's CCA runs on the top-k subspaces: their k_x + k_y must fit in n - 1."""
    n = 30
    base = randn(n, 3, seed=44)
    x = torch.cat([base * 100.0, randn(n, 12, seed=45) * 1e-3], dim=1)  # 99% variance in 3 dims
    y = torch.cat([base @ randn(3, 3, seed=46) * 100.0, randn(n, 12, seed=47) * 1e-3], dim=1)
    assert 15 + 15 > n - 1  # the widths together do not fit...
    assert M.svcca(x, y, variance_kept=0.99) == pytest.approx(1.0, abs=1e-6)  # ...k = 3 each does
    with pytest.raises(MetricError, match="top singular subspaces"):
        M.svcca(x, y, variance_kept=1.0)


def test_svcca_settings_checked():
    x = randn(50, 5, seed=11)
    with pytest.raises(MetricError, match="variance_kept"):
        M.svcca(x, x, variance_kept=1.5)
    with pytest.raises(TypeError):
        M.svcca(x, x, 0.9)  # settings are keyword-only


# --------------------------------------------------------------------------------------------
# Procrustes
# --------------------------------------------------------------------------------------------


def test_procrustes_distance():
    x = randn(50, 8, seed=12)
    q = random_orthogonal(8, 13)
    assert M.procrustes_distance(x, 2.5 * (x @ q) + 1.0) == pytest.approx(0.0, abs=1e-10)
    # padding with zero features (different feature counts) keeps the distance 0
    padded = torch.cat([x @ q, torch.zeros(50, 3, dtype=torch.float64)], dim=1)
    assert M.procrustes_distance(x, padded) == pytest.approx(0.0, abs=1e-10)
    for seed in range(3):
        x, y = correlated_pair(40, 6, 9, seed=20 + seed)
        d = M.procrustes_distance(x, y)
        assert 0.0 < d <= 2.0
        assert M.procrustes_distance(y, x) == pytest.approx(d, abs=1e-12)
        # reference: 2 - 2 ||X^T Y||_* of centred, unit-Frobenius inputs
        xn, yn = x.numpy() - x.numpy().mean(0), y.numpy() - y.numpy().mean(0)
        xn, yn = xn / np.linalg.norm(xn), yn / np.linalg.norm(yn)
        assert d == pytest.approx(2 - 2 * np.linalg.norm(xn.T @ yn, "nuc"), abs=1e-12)


def test_procrustes_more_features_than_samples():
    x, y = randn(10, 40, seed=14), randn(10, 25, seed=15)
    xn, yn = x.numpy() - x.numpy().mean(0), y.numpy() - y.numpy().mean(0)
    xn, yn = xn / np.linalg.norm(xn), yn / np.linalg.norm(yn)
    ref = 2 - 2 * np.linalg.norm(xn.T @ yn, "nuc")
    assert M.procrustes_distance(x, y) == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# spectral
# --------------------------------------------------------------------------------------------


def test_effective_rank():
    for n in (1, 5, 32):
        eye = torch.eye(n)
        assert M.effective_rank(eye) == pytest.approx(n, rel=1e-12)
        assert M.proportional_effective_rank(eye) == pytest.approx(1.0, rel=1e-12)
    rank1 = torch.outer(randn(20, seed=16), randn(30, seed=17))
    assert M.effective_rank(rank1) == pytest.approx(1.0, abs=1e-12)
    assert M.proportional_effective_rank(rank1) == pytest.approx(1 / 20, abs=1e-12)
    # reference: exp of the Shannon entropy of normalised singular values
    a = randn(30, 12, seed=18)
    s = np.linalg.svd(a.numpy(), compute_uv=False)
    p = s / s.sum()
    assert M.effective_rank(a) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert 1.0 < M.effective_rank(a) < 12.0


def test_effective_rank_masks_zero_singular_values():
    a = torch.zeros(10, 10, dtype=torch.float64)
    a[0, 0], a[1, 1] = 1.0, 1.0
    assert M.effective_rank(a) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(MetricError, match="all-zero"):
        M.effective_rank(torch.zeros(4, 4))


def test_stable_rank():
    assert M.stable_rank(torch.eye(7)) == pytest.approx(7.0, rel=1e-12)
    a = randn(25, 15, seed=19)
    an = a.numpy()
    ref = np.linalg.norm(an, "fro") ** 2 / np.linalg.norm(an, 2) ** 2
    assert M.stable_rank(a) == pytest.approx(ref, rel=1e-12)
    assert 1.0 <= M.stable_rank(a) <= 15.0


def test_condition_number():
    a = randn(20, 20, seed=21) + 5.0 * torch.eye(20, dtype=torch.float64)
    assert M.condition_number(a) == pytest.approx(np.linalg.cond(a.numpy()), rel=1e-10)
    rect = randn(30, 10, seed=22)
    assert M.condition_number(rect) == pytest.approx(np.linalg.cond(rect.numpy()), rel=1e-10)
    assert M.condition_number(a.float()) == pytest.approx(
        np.linalg.cond(a.float().double().numpy()), rel=1e-10
    )


def test_condition_number_rank_deficient_raises():
    b = randn(12, 4, seed=23)
    singular = b @ randn(4, 12, seed=24)  # rank 4
    with pytest.raises(MetricError, match=r"rank-deficient.*rank 4 < min\(shape\) = 12"):
        M.condition_number(singular)
    # float32 product: rank deficiency hidden at float32 round-off is still detected
    with pytest.raises(MetricError, match="rank"):
        M.condition_number(singular.float())
    with pytest.raises(MetricError, match="rank"):
        M.condition_number(torch.zeros(3, 3))


# --------------------------------------------------------------------------------------------
# sparsity
# --------------------------------------------------------------------------------------------


def np_gini(v: np.ndarray) -> float:
    c = np.sort(np.abs(v.ravel()))
    n = c.size
    k = np.arange(1, n + 1)
    return 1 - 2 * np.sum(c / c.sum() * (n - k + 0.5) / n)


@pytest.mark.parametrize("n", [2, 10, 1000])
def test_gini_and_hoyer_extremes(n):
    one_hot = torch.zeros(n)
    one_hot[n // 2] = -3.0
    # a single non-zero among N sits at k = N: G = 1 - 2 (N - N + 1/2) / N = 1 - 1/N
    assert M.gini(one_hot) == pytest.approx(1 - 1 / n, abs=1e-12)
    assert M.gini(torch.full((n,), 0.3)) == pytest.approx(0.0, abs=1e-12)
    assert M.hoyer(one_hot) == pytest.approx(1.0, abs=1e-12)
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    assert M.hoyer(0.3 * signs) == pytest.approx(0.0, abs=1e-12)


def test_gini_and_hoyer_references():
    w = randn(16, 9, seed=25)
    wn = w.numpy().ravel()
    assert M.gini(w) == pytest.approx(np_gini(wn), abs=1e-12)
    l1, l2, n = np.abs(wn).sum(), np.linalg.norm(wn), wn.size
    assert M.hoyer(w) == pytest.approx((np.sqrt(n) - l1 / l2) / (np.sqrt(n) - 1), abs=1e-12)
    sparse = w * (randn(16, 9, seed=26).abs() > 1.5)
    assert M.gini(sparse) > M.gini(w) and M.hoyer(sparse) > M.hoyer(w)
    with pytest.raises(MetricError, match="all-zero"):
        M.gini(torch.zeros(5))
    with pytest.raises(MetricError, match="at least 2"):
        M.hoyer(torch.ones(1))


# --------------------------------------------------------------------------------------------
# norms and dynamics
# --------------------------------------------------------------------------------------------


def test_norms_against_numpy():
    a = randn(13, 7, seed=27)
    an = a.numpy()
    assert M.frobenius_norm(a) == pytest.approx(np.linalg.norm(an, "fro"), rel=1e-12)
    assert M.nuclear_norm(a) == pytest.approx(np.linalg.norm(an, "nuc"), rel=1e-12)
    assert M.spectral_norm(a) == pytest.approx(np.linalg.norm(an, 2), rel=1e-12)
    v = randn(11, seed=28)
    assert M.frobenius_norm(v) == pytest.approx(np.linalg.norm(v.numpy()), rel=1e-12)
    with pytest.raises(MetricError, match="2-D"):
        M.nuclear_norm(v)


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160, 1e200, 1e300])
def test_extreme_magnitudes_are_scaled_before_squaring(scale):
    """float64 squares overflow beyond ~1.3e154 and vanish below ~1e-162: closed forms hold at
    any finite magnitude."""
    v = torch.tensor([3.0, -4.0, 0.0, 0.0], dtype=torch.float64)  # ||v|| = 5, l1 = 7
    x = v * scale
    assert M.frobenius_norm(x) == pytest.approx(5.0 * scale, rel=1e-14)
    assert M.hoyer(x) == pytest.approx((2.0 - 7.0 / 5.0) / (2.0 - 1.0), abs=1e-14)  # sqrt(4) = 2
    assert 0.0 <= M.hoyer(x) <= 1.0
    # sorted magnitudes 0, 0, 3, 4 (sum 7): G = 1 - 2/N sum_k c_k/7 (N - k + 1/2)
    assert M.gini(x) == pytest.approx(1 - 2 / 4 * (3 / 7 * 1.5 + 4 / 7 * 0.5), abs=1e-14)
    w = x.reshape(2, 2)
    assert M.relative_weight_change(w, 2 * w) == pytest.approx(1.0, rel=1e-14)
    assert M.gradient_cosine_similarity(w, -3 * w) == pytest.approx(-1.0, abs=1e-14)
    acts = randn(40, 6, seed=48)
    assert M.cka(acts * scale, acts) == pytest.approx(1.0, abs=1e-10)
    assert M.procrustes_distance(acts * scale, acts) == pytest.approx(0.0, abs=1e-10)


def test_relative_weight_change():
    w0 = randn(8, 6, seed=29)
    delta = randn(8, 6, seed=30)
    ref = np.linalg.norm(delta.numpy()) / np.linalg.norm(w0.numpy())
    assert M.relative_weight_change(w0, w0 + delta) == pytest.approx(ref, rel=1e-12)
    assert M.relative_weight_change(w0, w0) == 0.0
    assert M.relative_weight_change(w0, 2 * w0) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(MetricError, match="same shape"):
        M.relative_weight_change(w0, w0.T)
    with pytest.raises(MetricError, match="all zeros"):
        M.relative_weight_change(torch.zeros(3), torch.ones(3))


def test_gradient_cosine_similarity():
    g = randn(5, 4, seed=31)
    h = randn(5, 4, seed=32)
    gn, hn = g.numpy().ravel(), h.numpy().ravel()
    ref = gn @ hn / (np.linalg.norm(gn) * np.linalg.norm(hn))
    assert M.gradient_cosine_similarity(g, h) == pytest.approx(ref, abs=1e-12)
    assert M.gradient_cosine_similarity(g, 3 * g) == pytest.approx(1.0, abs=1e-12)
    assert M.gradient_cosine_similarity(g, -g) == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(MetricError, match="all-zero"):
        M.gradient_cosine_similarity(g, torch.zeros(5, 4))


# --------------------------------------------------------------------------------------------
# dtypes, devices and input validation across the registry
# --------------------------------------------------------------------------------------------


def _inputs(name: str, a: torch.Tensor, b: torch.Tensor):
    return (a, b) if M.get_metric(name).comparative else (a,)


ALL = M.list_metrics()


@pytest.mark.parametrize("name", ALL)
def test_low_precision_inputs_are_upcast(name):
    a = randn(64, 6, seed=33).to(torch.bfloat16)
    b = (a.double() @ randn(6, 6, seed=34) + randn(64, 6, seed=35)).to(torch.bfloat16)
    fn = M.get_metric(name)
    got = fn(*_inputs(name, a, b))
    want = fn(*_inputs(name, a.float(), b.float()))  # same values, exactly representable
    assert isinstance(got, float) and math.isfinite(got)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert fn(*_inputs(name, a.half(), b.half())) == pytest.approx(want, rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_non_finite_and_empty_inputs_raise(name):
    a, b = randn(40, 5, seed=36), randn(40, 5, seed=37)
    fn = M.get_metric(name)
    bad = a.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(MetricError, match="non-finite"):
        fn(*_inputs(name, bad, b))
    bad[3, 2] = float("inf")
    with pytest.raises(MetricError, match="non-finite"):
        fn(*_inputs(name, bad, b))
    if fn.comparative:
        with pytest.raises(MetricError, match="non-finite"):
            fn(a, bad)
    with pytest.raises(MetricError, match="empty"):
        fn(*_inputs(name, torch.empty(0, 5), torch.empty(0, 5)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name):
    a, b = correlated_pair(80, 6, 5, seed=38)
    if not M.get_metric(name).comparative or name in ("relative_weight_change",):
        b = a + 0.1 * randn(80, 6, seed=39)
    if name == "gradient_cosine_similarity":
        b = a + randn(80, 6, seed=40)
    fn = M.get_metric(name)
    cpu = fn(*_inputs(name, a.float(), b.float()))
    gpu = fn(*_inputs(name, a.float().cuda(), b.float().cuda()))
    assert gpu == pytest.approx(cpu, rel=1e-9, abs=1e-12)


def test_numpy_arrays_accepted():
    a = randn(30, 4, seed=41)
    assert M.stable_rank(a.numpy()) == pytest.approx(M.stable_rank(a))


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_contents():
    expected = {
        "cka",
        "svcca",
        "pwcca",
        "procrustes",
        "effective_rank",
        "proportional_effective_rank",
        "stable_rank",
        "condition_number",
        "gini",
        "hoyer",
        "frobenius_norm",
        "nuclear_norm",
        "spectral_norm",
        "relative_weight_change",
        "gradient_cosine_similarity",
    }
    assert expected <= set(ALL)
    assert set(M.list_metrics(comparative=True)) >= {"cka", "pwcca", "relative_weight_change"}
    assert "cka" not in M.list_metrics(comparative=False)
    assert "cka" not in M.list_metrics(kind="weights")
    assert "gini" in M.list_metrics(kind="gradients")
    for name in expected:
        spec = M.get_metric(name)
        assert spec.name == name and spec.description and spec.fn.__doc__
        assert spec.kinds and set(spec.kinds) <= set(M.KINDS)


def test_register_new_metric_with_one_decorator():
    name = "test_only_max_abs"
    try:

        @M.register_metric(name, comparative=False, kinds=("weights",))
        def max_abs(x: torch.Tensor, *, scale: float = 1.0) -> float:
            """Largest absolute entry times ``scale``."""
            return float(x.abs().max()) * scale

        spec = M.get_metric(name)
        assert spec.fn is max_abs and not spec.comparative and spec.kinds == ("weights",)
        assert spec.description == "Largest absolute entry times ``scale``."
        assert spec(torch.tensor([-3.0, 2.0]), scale=2.0) == 6.0
        assert name in M.list_metrics(kind="weights")
        with pytest.raises(ValueError, match="already registered"):

            @M.register_metric(name, comparative=False)
            def other(x):
                return 0.0

        with pytest.raises(ValueError, match="kinds"):
            M.register_metric("x_bad_kind", comparative=False, kinds=("logits",))
    finally:
        M.unregister_metric(name)
    assert name not in M.list_metrics()


def test_get_metric_typo_suggests_nearest():
    with pytest.raises(KeyError) as info:
        M.get_metric("effective_rnak")
    msg = str(info.value)
    assert "effective_rnak" in msg and "Did you mean 'effective_rank'" in msg
    with pytest.raises(KeyError, match="'cka'"):
        M.get_metric("ckaa")
    with pytest.raises(KeyError, match="Registered metrics"):
        M.get_metric("zzzzzz")


def test_metric_error_is_value_error():
    assert issubclass(MetricError, ValueError)
