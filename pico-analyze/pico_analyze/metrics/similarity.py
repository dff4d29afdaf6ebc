"""Comparative representation-similarity metrics: CKA, SVCCA, PWCCA, Procrustes distance.

All take two activation matrices ``x`` of shape ``(n_samples, p1)`` and ``y`` of shape
``(n_samples, p2)`` whose rows are the same inputs in the same order (e.g. one layer's
activations at two checkpoints); the feature counts may differ. Everything is computed in
float64 on the inputs' device (``y`` is moved to ``x``'s device if needed).
"""

from __future__ import annotations

import torch

from ._utils import as_matrix, check_rtol, float64, on_same_device, unit_max
from .registry import MetricError, register_metric
from .singular_values import per_tensor

__all__ = [
    "canonical_correlations",
    "cka",
    "procrustes_distance",
    "pwcca",
    "svcca",
]


def _pair(x: torch.Tensor, y: torch.Tensor, min_samples: int, what: str):
    x = as_matrix(x, "x")
    y = on_same_device(x, as_matrix(y, "y"))
    if x.shape[0] != y.shape[0]:
        raise MetricError(
            f"{what} compares two representations of the same inputs: x and y must have the "
            f"same number of rows (samples), got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[0] < min_samples:
        raise MetricError(
            f"{what} needs at least {min_samples} samples (rows), got {x.shape[0]}; "
            "measure on more inputs"
        )
    return x, y


def _zero_variance(name: str) -> MetricError:
    return MetricError(
        f"{name} has zero variance (all rows identical, e.g. a constant or dead "
        "representation); the similarity is undefined"
    )


def _centered(a: torch.Tensor, name: str) -> torch.Tensor:
    """Column-centred float64 copy of ``a``; raises if nothing but round-off is left."""
    return _centered_with_norm(a, name)[0]


def _centered_with_norm(a: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_centered` and its Frobenius norm (a 0-d tensor)."""
    a, _ = unit_max(float64(a))  # every metric here is scale invariant: no overflow below
    c = a - a.mean(dim=0, keepdim=True)
    scale = float(torch.linalg.matrix_norm(a))
    norm = torch.linalg.matrix_norm(c)
    if not float(norm) > 4 * a.shape[0] * torch.finfo(a.dtype).eps * scale:
        raise _zero_variance(name)
    return c, norm


# --------------------------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------------------------


def _hsic_feature(a: torch.Tensor, b: torch.Tensor, debiased: bool) -> torch.Tensor:
    """HSIC numerator of linear kernels K = a a^T, L = b b^T computed without n x n Grams.

    Biased (a, b centered): tr(K L) = ||a^T b||_F^2. Debiased, with K~ = K - diag(K):
      tr(K~ L~)  = ||a^T b||_F^2 - <d, e>,            d_i = ||a_i||^2, e_i = ||b_i||^2
      1^T K~ 1   = ||a^T 1||^2 - sum(d)
      K~ 1       = a (a^T 1) - d
    """
    tr = (a.T @ b).square().sum()
    if not debiased:
        return tr
    n = a.shape[0]
    d, e = a.square().sum(1), b.square().sum(1)
    sa, sb = a.sum(0), b.sum(0)
    k1, l1 = a @ sa - d, b @ sb - e
    sum_k, sum_l = sa @ sa - d.sum(), sb @ sb - e.sum()
    return tr - d @ e + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)


def _gram_terms(a: torch.Tensor, debiased: bool):
    k = a @ a.T
    if debiased:
        k.diagonal().zero_()
    return k, k.sum(1), k.sum()


def _hsic_gram(kt, lt, debiased: bool) -> torch.Tensor:
    (gram_k, k1, sum_k), (gram_l, l1, sum_l) = kt, lt
    tr = torch.dot(gram_k.reshape(-1), gram_l.reshape(-1))  # tr(K L), K and L symmetric
    if not debiased:
        return tr
    n = gram_k.shape[0]
    return tr + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)


GRAM_MEMO_MAX_ROWS = 1024  # n x n Gram terms are kept for a reference only up to this n


def _cka_side(x: torch.Tensor, name: str, debiased: bool, method: str):
    """(centred x at unit Frobenius norm, its Gram terms (method gram) or None, HSIC(x, x)).

    HSIC(x, x) and the Gram terms (the costly parts, O(n p^2) or O(n^2 p)) depend on x alone,
    so inside the runner they are computed once per reference tensor (compared with every
    analysed step); the centred copy is O(n p) and recomputed rather than kept, and Gram terms
    of more than GRAM_MEMO_MAX_ROWS samples are not kept either.
    """
    a, norm = _centered_with_norm(x, name)
    a = a / norm  # scale invariant; keeps 4th-power sums from overflow

    def side():
        if method == "feature":
            return None, _hsic_feature(a, a, debiased)
        kt = _gram_terms(a, debiased)
        return kt, _hsic_gram(kt, kt, debiased)

    if method == "gram" and x.shape[0] > GRAM_MEMO_MAX_ROWS:
        return a, *side()
    return a, *per_tensor(x, ("cka_side", debiased, method), side)


@register_metric("cka", comparative=True, kinds=("activations",))
def cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = True, method: str = "auto") -> float:
    """Linear centered kernel alignment (CKA) between two representations of the same inputs.

    ``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels
    ``K = X X^T`` and ``L = Y Y^T`` (Kornblith et al. 2019, "Similarity of Neural Network
    Representations Revisited").

    * ``debiased=True`` (default): the unbiased HSIC estimator of Song et al. 2012,
      ``HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1)/((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))``
      with ``K~``, ``L~`` the Grams with zeroed diagonals, as used for CKA by Nguyen, Raghu &
      Kornblith 2021 ("Do Wide and Deep Networks Learn the Same Things?"). It removes the
      upward bias of biased CKA when features are many relative to samples (independent
      representations score ~0 instead of a large positive value). Needs n >= 4; can be
      slightly negative.
    * ``debiased=False``: the biased estimator ``HSIC_0 = tr(K H L H) / (n-1)^2``
      (``H = I - 11^T/n``), which for linear kernels gives
      ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``; in [0, 1].

    Args:
        x: ``(n_samples, p1)`` activations.
        y: ``(n_samples, p2)`` activations of the same inputs; ``p2`` may differ from ``p1``.
        debiased: use the unbiased HSIC estimator (default) or the biased one.
        method: ``"gram"`` (n x n Gram matrices, O(n^2 (p1+p2))), ``"feature"``
            (p x p cross-products, O(n (p1+p2)^2), no n x n memory), or ``"auto"`` (the cheaper
            one). Both give the same value up to round-off.

    Invariant to orthogonal transforms and isotropic scaling of either input, and to
    translations (inputs are mean-centred). Computed in float64.
    """
    x, y = _pair(x, y, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    n, p1 = x.shape
    p2 = y.shape[1]
    if method == "auto":
        method = "feature" if p1 * p1 + p2 * p2 + p1 * p2 <= n * (p1 + p2) else "gram"
    if method not in ("feature", "gram"):
        raise MetricError(f"method must be 'auto', 'feature' or 'gram', got {method!r}")
    a, kt, hxx = _cka_side(x, "x", debiased, method)
    b, lt, hyy = _cka_side(y, "y", debiased, method)
    hxy = _hsic_feature(a, b, debiased) if method == "feature" else _hsic_gram(kt, lt, debiased)
    if not (float(hxx) > 0.0 and float(hyy) > 0.0):
        which = "x" if not float(hxx) > 0.0 else "y"
        raise MetricError(
            f"the {'debiased ' if debiased else ''}HSIC estimate of {which} with itself is not "
            f"positive (n_samples={n}); the representation is (nearly) degenerate for this "
            "sample size: measure on more samples" + (" or use debiased=False" if debiased else "")
        )
    return float(hxy / torch.sqrt(hxx * hyy))


# --------------------------------------------------------------------------------------------
# CCA family
# --------------------------------------------------------------------------------------------


def _cca_pair(x, y, what: str):
    x, y = _pair(x, y, 3, what)
    n = x.shape[0]
    for name, a in (("x", x), ("y", y)):
        p = a.shape[1]
        if p >= n - 1:
            raise MetricError(
                f"{what} needs fewer features than samples: {name} has {p} features but only "
                f"{n} samples. After mean-centring, {n} samples span at most {n - 1} "
                "dimensions, so with n_features >= n_samples - 1 every canonical correlation "
                f"is trivially 1. Use at least {p + 2} samples (in practice several times "
                "more than features), or reduce the features first (e.g. a random or PCA "
                "projection), or use cka, which has no such limit"
            )
    return x, y


def _check_joint_dimension(dim_x: int, dim_y: int, n: int, what: str, kept: str) -> None:
    """Refuse when the two subspaces compared are too large for the samples.

    After mean-centring, n samples span an (n-1)-dimensional space; two subspaces of it of
    dimensions ``dim_x`` and ``dim_y`` intersect in at least ``dim_x + dim_y - (n - 1)``
    dimensions, and every direction of the intersection is a canonical correlation of exactly 1
    whatever the data (PWCCA's weights of those directions then depend on the basis chosen
    inside the intersection, i.e. on column order). So ``dim_x + dim_y <= n - 1`` is required.
    """
    trivial = dim_x + dim_y - (n - 1)
    if trivial > 0:
        raise MetricError(
            f"{what} compares {kept} of dimensions {dim_x} (x) and {dim_y} (y) on only {n} "
            f"samples: after mean-centring they span at most {n - 1} dimensions, so at least "
            f"{trivial} canonical correlation{'s are' if trivial > 1 else ' is'} 1 for any data. "
            f"Use at least {dim_x + dim_y + 1} samples (in practice several times more), reduce "
            "the features first, or use cka, which has no such limit"
        )


def _basis(a: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis (n, r) of the centred column space of ``a`` and its singular values.

    Directions with singular value <= rtol * sigma_max are dropped (rank-deficient inputs).
    """
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    r = int((s > rtol * s[0]).sum())
    return u[:, :r], s[:r]


# A low-rank column space is found from a random sketch when the result provably equals the
# SVD's: for inputs at least 64 wide (narrower, the SVD costs no more than the sketch) and ranks
# well below the width. A 128 x 96 input of rank 8 (the tiny shape's per-head OV activations):
# 0.21 ms against the SVD's 0.52.
_SKETCH_MIN_WIDTH, _SKETCH_START, _SKETCH_MARGIN, _SKETCH_ANGLE = 64, 64, 4.0, 1e-12


def _span_via_sketch(a: torch.Tensor, rtol: float) -> torch.Tensor | None:
    """Orthonormal basis (n, r) of the span of the singular directions of ``a`` (n, p; float64)
    with singular value > ``rtol * sigma_max`` -- the span of ``_basis(a, rtol)[0]`` -- for a
    wide ``a`` of low numerical rank, without its full SVD; None where that cannot be
    guaranteed (then the SVD is needed).

    A randomized range finder with an a posteriori check (Halko, Martinsson & Tropp 2011,
    "Finding structure with randomness", sections 4.3-4.4): ``Q`` an orthonormal basis of
    ``a @ Omega`` (``Omega`` a fixed-seed Gaussian p x k), ``B = Q^T a`` (k x p) and the residual
    ``E = a - Q B``, computed explicitly. ``a = Q B + E``, so each singular value of ``a`` is
    within ``||E||_2 <= ||E||_F`` of the same singular value of ``B`` (Weyl), and the span of the
    directions of ``B`` kept at the threshold is within an angle ``||E|| / gap`` of ``a``'s
    (Wedin); the singular values of ``a`` beyond the k-th are at most ``||E||``. The sketch is
    accepted only when ``||E||_F`` is below ``threshold / _SKETCH_MARGIN`` (so those are dropped),
    no singular value of ``B`` lies within ``2 ||E||_F`` of the threshold, and the kept
    directions are separated from the dropped ones by ``||E||_F / _SKETCH_ANGLE``: then the
    count equals the SVD's and the span agrees to ~1e-12. ``k`` starts at 64 (a quarter of the width
    if that is less) and doubles (up to a quarter of the width) while every direction of the
    sketch is kept. In practice this holds for exactly low-rank float64 inputs (e.g. the OV
    circuit's activations, per head and heads concatenated);
    rounding noise of float32/bf16 storage is a floor above it, and the SVD is used.
    """
    n, p = a.shape
    if p < _SKETCH_MIN_WIDTH:
        return None
    gen = torch.Generator(device="cpu").manual_seed(0)
    k = min(_SKETCH_START, p // 4)
    while 4 * k <= p:
        omega = torch.randn(p, k, generator=gen, dtype=torch.float64).to(a.device)
        q = torch.linalg.qr(a @ omega, mode="reduced")[0]
        b = q.T @ a
        u, s, _ = torch.linalg.svd(b, full_matrices=False)
        threshold = rtol * float(s[0])
        r = int((s > threshold).sum())
        if r == k:
            k *= 2  # the rank may exceed the sketch: a wider one
            continue
        resid = float(torch.linalg.matrix_norm(a - q @ b))
        gap = float(s[r - 1]) - max(float(s[r]), threshold)
        near = bool(((s - threshold).abs() <= 2 * resid).any())
        if resid * _SKETCH_MARGIN <= threshold and not near and resid <= _SKETCH_ANGLE * gap:
            return q @ u[:, :r]
        return None  # a noise floor above what the check allows: a wider sketch won't help
    return None


def _span(a: torch.Tensor, rtol: float) -> torch.Tensor:
    """Orthonormal basis of the kept column space of ``a``: a random sketch's where it provably
    equals the SVD's (:func:`_span_via_sketch`), else the SVD's."""
    q = _span_via_sketch(a, rtol)
    return _basis(a, rtol)[0] if q is None else q


def _centred_span(x: torch.Tensor, name: str, rtol: float | None):
    """(centred x, orthonormal basis of its kept column space), computed once per reference
    tensor inside the runner. Only the span: CCA and PWCCA do not depend on the basis chosen
    in it (SVCCA, which ranks directions, uses :func:`_centred_basis`)."""
    a = _centered(x, name)
    tol = check_rtol(rtol, tuple(x.shape), x.dtype)
    return a, per_tensor(x, ("cca_span", rtol), lambda: _span(a, tol))


def _centred_basis(x: torch.Tensor, name: str, rtol: float | None):
    """(centred x, (orthonormal basis of its column space, singular values)); the basis (an
    SVD) is computed once per reference tensor inside the runner (see :func:`_cka_side`)."""
    a = _centered(x, name)
    tol = check_rtol(rtol, tuple(x.shape), x.dtype)
    return a, per_tensor(x, ("cca_basis", rtol), lambda: _basis(a, tol))


def _bases(x, y, rtol):
    (a, basis_x), (b, basis_y) = _centred_basis(x, "x", rtol), _centred_basis(y, "y", rtol)
    return a, b, basis_x, basis_y


def canonical_correlations(
    x: torch.Tensor, y: torch.Tensor, *, rtol: float | None = None
) -> torch.Tensor:
    """Canonical correlations between ``x`` (n, p1) and ``y`` (n, p2), largest first.

    After mean-centring, with ``Q_x``, ``Q_y`` orthonormal bases of the column spaces (thin
    SVDs, or a random sketch where that provably gives the same subspace -- see
    :func:`_span_via_sketch` -- dropping directions with singular value <= ``rtol * sigma_max``;
    default ``max(shape) * eps`` of the input dtype), the canonical correlations are the singular
    values of ``Q_x^T Q_y`` (Björck & Golub 1973) -- no covariance inverse is formed.
    Returns a float64 tensor of length ``min(rank_x, rank_y)``. Requires
    ``rank_x + rank_y <= n_samples - 1`` (raises :class:`MetricError` otherwise): beyond it,
    ``rank_x + rank_y - (n_samples - 1)`` correlations are 1 for any data.
    """
    x, y = _cca_pair(x, y, "CCA")
    (_, qx), (_, qy) = _centred_span(x, "x", rtol), _centred_span(y, "y", rtol)
    _check_joint_dimension(qx.shape[1], qy.shape[1], x.shape[0], "CCA", "column spaces")
    return torch.linalg.svdvals(qx.T @ qy).clamp(0.0, 1.0)


@register_metric("svcca", comparative=True, kinds=("activations",))
def svcca(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    variance_kept: float = 0.99,
    rtol: float | None = None,
) -> float:
    """Singular vector CCA (Raghu et al. 2017, "SVCCA: Singular Vector Canonical Correlation
    Analysis for Deep Learning Dynamics and Interpretability").

    Each input (``x``: (n_samples, p1), ``y``: (n_samples, p2)) is mean-centred and reduced
    to its top-k singular directions, k the smallest number whose squared singular values
    sum to at least ``variance_kept`` of the total variance. CCA between the reduced
    representations gives correlations ``rho_1 >= ... >= rho_c`` (``c = min(k_x, k_y)``), and
    ``SVCCA = (1/c) sum_i rho_i`` (mean canonical correlation), in [0, 1].

    ``rtol`` is the relative singular-value tolerance below which directions count as zero
    (default ``max(shape) * eps`` of the input dtype). Requires ``n_features <= n_samples - 2``
    for both inputs (before the SVD reduction) and ``k_x + k_y <= n_samples - 1`` (after it):
    beyond that, ``k_x + k_y - (n_samples - 1)`` correlations are 1 for any data.
    """
    variance_kept = float(variance_kept)
    if not 0.0 < variance_kept <= 1.0:
        raise MetricError(f"variance_kept must be in (0, 1], got {variance_kept}")
    x, y = _cca_pair(x, y, "SVCCA")
    _, _, (qx, sx), (qy, sy) = _bases(x, y, rtol)

    def top(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        var = s.square()
        frac = torch.cumsum(var, 0) / var.sum()
        k = int((frac < variance_kept - 1e-12).sum()) + 1
        return q[:, : min(k, q.shape[1])]

    kx, ky = top(qx, sx), top(qy, sy)
    _check_joint_dimension(kx.shape[1], ky.shape[1], x.shape[0], "SVCCA", "top singular subspaces")
    rho = torch.linalg.svdvals(kx.T @ ky).clamp(0.0, 1.0)
    return float(rho.mean())


@register_metric("pwcca", comparative=True, kinds=("activations",))
def pwcca(x: torch.Tensor, y: torch.Tensor, *, rtol: float | None = None) -> float:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018, "Insights on representational
    similarity in neural networks with canonical correlation").

    With canonical correlations ``rho_i`` between ``x`` (n_samples, p1) and ``y``
    (n_samples, p2) and ``h_i`` the corresponding unit-norm canonical variates of ``x`` (n-vectors
    in sample space), each correlation is weighted by how much of ``x``'s neurons it accounts
    for: ``alpha_i = sum_j |<h_i, x_j>|`` over the (centred) neuron activation vectors ``x_j``
    (columns of x), and ``PWCCA = sum_i alpha_i rho_i / sum_i alpha_i``, in [0, 1].

    Not symmetric: the weights come from ``x`` (pass the reference representation as ``x``).
    CCA is computed in float64 from orthonormal bases (see :func:`canonical_correlations`);
    ``rtol`` as there. Requires ``rank_x + rank_y <= n_samples - 1`` (for full-rank inputs,
    ``p1 + p2 <= n_samples - 1``): beyond it some correlations are 1 for any data, and the
    weights of those directions depend on the column order of the inputs.
    """
    x, y = _cca_pair(x, y, "PWCCA")
    (a, qx), (_, qy) = _centred_span(x, "x", rtol), _centred_span(y, "y", rtol)
    _check_joint_dimension(qx.shape[1], qy.shape[1], x.shape[0], "PWCCA", "column spaces")
    u, rho, _ = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    h = qx @ u  # (n, c) orthonormal canonical variates of x
    alpha = (h.T @ a).abs().sum(1)
    return float((alpha * rho.clamp(0.0, 1.0)).sum() / alpha.sum())


# --------------------------------------------------------------------------------------------
# Orthogonal Procrustes
# --------------------------------------------------------------------------------------------


def _reduce_features(a: torch.Tensor) -> torch.Tensor:
    """An (n, n) matrix ``r`` with ``r^T b`` having the singular values of ``a^T b`` for all b.

    With ``a^T = Q R`` (thin QR), ``a^T b = Q (R b)`` and Q has orthonormal columns.
    """
    _, r = torch.linalg.qr(a.T, mode="reduced")
    return r.T


@register_metric("procrustes", comparative=True, kinds=("activations",))
def procrustes_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Orthogonal Procrustes distance (Ding, Denain & Steinhardt 2021, "Grounding
    Representation Similarity with Statistical Testing").

    ``x`` (n_samples, p1) and ``y`` (n_samples, p2) are mean-centred and scaled to unit
    Frobenius norm; then ``d = min_Q ||X - Y Q||_F^2 = 2 - 2 ||X^T Y||_*`` (nuclear norm; Q
    ranges over matrices with orthonormal columns/rows, so p1 != p2 is allowed). 0 for
    representations equal up to rotation, translation and isotropic scaling; at most 2.
    Computed in float64; when a feature count exceeds n the features are first reduced to n by
    a QR factorisation (same value, less work).
    """
    x, y = _pair(x, y, 2, "Procrustes distance")
    a, b = _centered(x, "x"), _centered(y, "y")
    a, b = a / torch.linalg.matrix_norm(a), b / torch.linalg.matrix_norm(b)
    n = a.shape[0]
    if a.shape[1] > n:
        a = _reduce_features(a)
    if b.shape[1] > n:
        b = _reduce_features(b)
    nuc = torch.linalg.svdvals(a.T @ b).sum()
    return float((2.0 - 2.0 * nuc).clamp(0.0, 2.0))
