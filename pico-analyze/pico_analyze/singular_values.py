"""Singular values shared across metrics: one decomposition per matrix, the cheapest exact one.

Reads the matrices the runner is about to measure; writes nothing. The spectral metrics
(effective rank, PER, stable rank, condition number, nuclear and spectral norms) each call
``torch.linalg.svdvals`` on the same float64 tensor. While :class:`SharedSingularValues` is
active, that call is answered from a memo keyed by the tensor object (and its version counter;
the memo holds the tensor, so its id cannot be reused), computed once by the cheapest exact
route:

* a per-head circuit ``A @ B`` of rank r (A m x r, B r x n, r = hd or 2 hd): from the r x r core
  of two thin QR factorisations (:func:`low_rank_singular_values`), padded with exact zeros;
* a matrix far from square (m >= 2n or n >= 2m): from the triangular factor of a QR
  factorisation of its tall orientation (:func:`reduced_singular_values`);
* otherwise ``torch.linalg.svdvals`` itself.

All are backward stable (no Gram matrix is formed, so small singular values keep their accuracy)
and give singular values only, never singular vectors.
"""

from __future__ import annotations

import torch

_svdvals = torch.linalg.svdvals  # the real one, whatever is patched later


def low_rank_singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Singular values of ``a @ b`` for a (..., m, r) and b (..., r, n), descending, padded with
    zeros to min(m, n).

    With thin QR factorisations ``a = Q_a R_a`` and ``b^T = Q_b R_b``,
    ``a b = Q_a (R_a R_b^T) Q_b^T`` and Q_a, Q_b have orthonormal columns, so the non-zero
    singular values of ``a b`` are those of the r x r core ``R_a R_b^T``.
    """
    m, n = a.shape[-2], b.shape[-1]
    r_a = torch.linalg.qr(a, mode="r").R
    r_b = torch.linalg.qr(b.mT, mode="r").R
    core = _svdvals(r_a @ r_b.mT)  # (..., min(m, r, n))
    pad = min(m, n) - core.shape[-1]
    if pad > 0:
        core = torch.cat([core, core.new_zeros(*core.shape[:-1], pad)], dim=-1)
    return core


def reduced_singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values of a matrix (or batch), through a QR reduction when it is far from square
    (x^T x = R^T R, so x and R share singular values)."""
    m, n = x.shape[-2], x.shape[-1]
    if max(m, n) >= 2 * min(m, n):
        tall = x.mT if m < n else x
        return _svdvals(torch.linalg.qr(tall, mode="r").R)
    return _svdvals(x)


class SharedSingularValues:
    """Context manager: serve ``torch.linalg.svdvals`` from a memo while it is active."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.memo: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def _svdvals(self, a, *args, **kwargs):
        if args or kwargs or not isinstance(a, torch.Tensor) or a.ndim < 2:
            return _svdvals(a, *args, **kwargs)
        hit = self.memo.get(id(a))
        if hit is not None and hit[0] is a and hit[1] == a._version:
            return hit[2].clone()
        s = reduced_singular_values(a)
        self.memo[id(a)] = (a, a._version, s)
        return s.clone()

    def prime(self, tensor: torch.Tensor, values: torch.Tensor | None) -> None:
        """Record known singular values of `tensor` (e.g. from its low-rank factors)."""
        if self.enabled and values is not None:
            self.memo[id(tensor)] = (tensor, tensor._version, values)

    def clear(self) -> None:
        self.memo.clear()

    def __enter__(self) -> SharedSingularValues:
        if self.enabled:
            torch.linalg.svdvals = self._svdvals
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            torch.linalg.svdvals = _svdvals
        self.clear()
