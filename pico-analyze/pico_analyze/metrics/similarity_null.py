"""A permutation null for linear CKA: how large CKA gets when the two inputs are unrelated.

Reads two activation matrices of the same inputs and writes numbers: the observed CKA, a
permutation p-value and a null band. Shuffling the rows of ``y`` breaks the pairing between the
two representations while keeping each one's geometry, so CKA(x, y[perm]) samples CKA under the
hypothesis "x and y are independent" (the permutation test of the HSIC independence statistic,
Gretton et al. 2008, "A Kernel Statistical Test of Independence"; CKA is normalised HSIC,
Kornblith et al. 2019). With debiased HSIC (Song et al. 2012) the null centres near 0; with
biased HSIC it sits well above 0 when samples are few relative to features, which is exactly why
a raw CKA value needs this scale.

Only HSIC(K, L_perm) depends on the permutation: with K~, L~ the Gram matrices of the centred
inputs with zeroed diagonals, L~_perm = P L~ P^T, so

    tr(K~ L~_perm) = sum_ij K~_ij L~_{p(i) p(j)}
    (K~ 1) . (L~_perm 1) = sum_i (K~1)_i (L~1)_{p(i)}

and 1^T L~ 1, HSIC(K, K), HSIC(L, L) are permutation invariant. All permutations are evaluated
as batched tensor operations on the Gram matrices (n x n), in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import MetricError

__all__ = ["CKANull", "cka_permutation_test"]

PERMUTATION_BATCH_ELEMENTS = 2**24  # permuted Gram entries held at once (128 MiB in float64)


@dataclass(frozen=True)
class CKANull:
    """Observed CKA and its permutation null distribution's summary."""

    value: float  # CKA(x, y)
    p_value: float  # (1 + #{null >= value}) / (1 + n_permutations)
    null_mean: float
    null_low: float  # lower quantile of the null (default 2.5%)
    null_high: float  # upper quantile of the null (default 97.5%)
    n_permutations: int


def _gram(a: torch.Tensor, debiased: bool) -> torch.Tensor:
    a = a.to(torch.float64)
    a = a - a.mean(0, keepdim=True)
    norm = torch.linalg.matrix_norm(a)
    if not norm > 0:
        raise MetricError("an input has zero variance; CKA is undefined")
    a = a / norm  # CKA is scale invariant; unit norm keeps 4th powers far from overflow
    k = a @ a.T
    if debiased:
        k.diagonal().zero_()
    return k


def _hsic(k: torch.Tensor, g: torch.Tensor, debiased: bool) -> torch.Tensor:
    """HSIC numerators of (batched) Gram pairs: (..., n, n) x (..., n, n) -> (...)."""
    tr = (k * g).sum((-2, -1))
    if not debiased:
        return tr  # K, L built from centred inputs are already doubly centred
    n = k.shape[-1]
    k1, l1 = k.sum(-1), g.sum(-1)
    return tr + k1.sum(-1) * l1.sum(-1) / ((n - 1) * (n - 2)) - 2.0 * (k1 * l1).sum(-1) / (n - 2)


def cka_permutation_test(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_permutations: int = 200,
    debiased: bool = True,
    seed: int = 0,
    quantiles: tuple[float, float] = (0.025, 0.975),
) -> CKANull:
    """Linear CKA of ``x`` (n, p1) and ``y`` (n, p2) with a permutation null.

    The null draws ``n_permutations`` uniformly random row permutations of ``y`` (seeded: the
    same draws for every call with the same ``seed`` and n); ``p_value`` is the permutation
    p-value of the one-sided test "CKA is larger than for unrelated inputs",
    ``(1 + #{CKA(x, y[perm]) >= CKA(x, y)}) / (1 + n_permutations)`` (never 0). The value
    equals :func:`pico_analyze.metrics.similarity.cka` with the same ``debiased``.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise MetricError(
            f"x and y must be (n, p) matrices of the same inputs, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    n = x.shape[0]
    if n < (4 if debiased else 2) or n_permutations < 1:
        raise MetricError(f"need n >= 4 samples and >= 1 permutation, got n={n}")
    k, g = _gram(x, debiased), _gram(y.to(x.device), debiased)
    denom = torch.sqrt(_hsic(k, k, debiased) * _hsic(g, g, debiased))
    if not denom > 0:
        raise MetricError("an input has zero HSIC with itself; CKA is undefined")
    value = float(_hsic(k, g, debiased) / denom)
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_permutations)])
    perms = perms.to(k.device)
    null = []
    per_batch = max(1, PERMUTATION_BATCH_ELEMENTS // (n * n))
    for chunk in perms.split(per_batch):
        lp = g[chunk[:, :, None], chunk[:, None, :]]  # (b, n, n): L~ with rows/cols permuted
        null.append(_hsic(k.expand_as(lp), lp, debiased) / denom)
    null = torch.cat(null)
    low, high = torch.quantile(null, torch.tensor(quantiles, dtype=null.dtype, device=null.device))
    return CKANull(
        value=value,
        p_value=float((1 + (null >= value).sum()) / (1 + n_permutations)),
        null_mean=float(null.mean()),
        null_low=float(low),
        null_high=float(high),
        n_permutations=n_permutations,
    )
