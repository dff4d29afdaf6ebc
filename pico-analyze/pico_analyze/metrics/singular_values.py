"""Singular values for the spectral metrics: one exact decomposition per matrix.

Effective rank, proportional effective rank, stable rank, condition number and the nuclear and
spectral norms all start from the singular values of the same matrix, computed in float64
whatever the stored dtype (the metrics still take their rank tolerance from the stored dtype);
they obtain them through :func:`singular_values`. Outside a :class:`SharedSingularValues` block
that computes them; inside one (the runner opens one per checkpoint), the answer is memoised per
tensor object and version counter (the memo holds the tensor, so its id cannot be reused), so all
spectral metrics of a matrix share one decomposition. The memo lives in a context variable of
this package: no library function is replaced.

Routes, all backward stable (no Gram matrix is formed, so small singular values keep their
accuracy) and all without singular vectors:

* a product ``A @ B`` of rank r (A m x r, B r x n), such as a per-head OV circuit: from the
  r x r core of two thin QR factorisations (:func:`low_rank_singular_values`), padded with zeros;
  the heads side by side (the concatenated circuit) from one m x (H r) matrix
  (:func:`concat_singular_values`); the runner primes the memo with these;
* a matrix far from square (m >= 2n or n >= 2m): from the triangular factor of a QR
  factorisation of its tall orientation (:func:`reduced_singular_values`);
* otherwise ``torch.linalg.svdvals``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch

from ._utils import FINITE, float64

__all__ = [
    "SharedSingularValues",
    "concat_singular_values",
    "low_rank_singular_values",
    "reduced_singular_values",
    "singular_values",
]


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
    core = torch.linalg.svdvals(r_a @ r_b.mT)  # (..., min(m, r, n))
    pad = min(m, n) - core.shape[-1]
    if pad > 0:
        core = torch.cat([core, core.new_zeros(*core.shape[:-1], pad)], dim=-1)
    return core


def concat_singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Singular values of ``C = [a_1 b_1 | ... | a_H b_H]`` for a (H, m, r) and b (H, r, n),
    descending, padded with zeros to min(m, H n).

    With thin QR factorisations ``b_h^T = Q_h R_h`` (Q_h n x k, k = min(n, r)),
    ``C = [a_1 R_1^T | ... | a_H R_H^T] blockdiag(Q_1^T, ..., Q_H^T)`` and the block-diagonal
    factor has orthonormal rows, so C has the singular values of the m x (H k) matrix
    ``[a_h R_h^T]`` (for the OV circuit of all heads: d x d instead of d x H d).
    """
    h, m = a.shape[0], a.shape[1]
    n = b.shape[-1]
    r_b = torch.linalg.qr(b.mT, mode="r").R  # (H, k, r), k = min(n, r)
    core = (a @ r_b.mT).permute(1, 0, 2).reshape(m, h * r_b.shape[-2])
    s = reduced_singular_values(core)
    pad = min(m, h * n) - s.shape[-1]
    return torch.cat([s, s.new_zeros(pad)]) if pad > 0 else s


def reduced_singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values of a matrix (or batch), through a QR reduction when it is far from square
    (x^T x = R^T R, so x and R share singular values)."""
    m, n = x.shape[-2], x.shape[-1]
    if max(m, n) >= 2 * min(m, n):
        tall = x.mT if m < n else x
        return torch.linalg.svdvals(torch.linalg.qr(tall, mode="r").R)
    return torch.linalg.svdvals(x)


class SharedSingularValues:
    """Context manager: within it, :func:`singular_values` is memoised per tensor, and each
    tensor's finiteness is checked once (``_utils.as_tensor``)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.memo: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.finite: dict[int, tuple[torch.Tensor, int]] = {}
        self.derived: dict[tuple, tuple[weakref.ref, int, Any]] = {}
        self.pinned: dict[int, weakref.ref] = {}
        self._token = None

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.memo.get(id(x))
        if hit is not None and hit[0] is x and hit[1] == x._version:
            return hit[2]
        s = reduced_singular_values(float64(x))
        self.memo[id(x)] = (x, x._version, s)
        return s

    def prime(self, tensor: torch.Tensor, values: torch.Tensor | None) -> None:
        """Record known singular values of `tensor` (e.g. from its low-rank factors), float64."""
        if self.enabled and values is not None:
            self.memo[id(tensor)] = (tensor, tensor._version, float64(values))

    def pin(self, x: torch.Tensor) -> None:
        """Mark `x` as a reference (compared with many others): :meth:`derive` keeps what is
        computed from it for as long as it lives."""
        key = id(x)
        if key not in self.pinned:
            forget = lambda _, i=key: self.pinned.pop(i, None)  # noqa: E731
            self.pinned[key] = weakref.ref(x, forget)

    def derive(self, x: torch.Tensor, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()``; for a pinned tensor, remembered for as long as it lives unchanged (a
        reference step's tensors are compared with every analysed step). Other tensors are
        used once, so nothing is kept for them."""
        pinned = self.pinned.get(id(x))
        if pinned is None or pinned() is not x:
            return compute()
        k = (id(x), key)
        hit = self.derived.get(k)
        if hit is not None and hit[0]() is x and hit[1] == x._version:
            return hit[2]
        value = compute()
        forget = lambda _, k=k: self.derived.pop(k, None)  # noqa: E731
        self.derived[k] = (weakref.ref(x, forget), x._version, value)
        return value

    def clear(self) -> None:
        """Forget the per-matrix memo (the runner calls this after each matrix); what
        :meth:`derive` holds goes with its tensors."""
        self.memo.clear()
        self.finite.clear()

    def __enter__(self) -> SharedSingularValues:
        self._finite_token = FINITE.set(self.finite)  # input checks: once per tensor
        if self.enabled:
            self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        FINITE.reset(self._finite_token)
        self.clear()
        self.derived.clear()
        self.pinned.clear()


_ACTIVE: ContextVar[SharedSingularValues | None] = ContextVar("pico_singular_values", default=None)


def per_tensor(x: torch.Tensor, key: tuple, compute: Callable[[], Any]) -> Any:
    """``compute()``, a function of `x` (and `key`) only; inside SharedSingularValues it is
    computed once per tensor (see :meth:`SharedSingularValues.derive`)."""
    shared = _ACTIVE.get()
    return compute() if shared is None else shared.derive(x, key, compute)


def singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D tensor in float64, descending (memoised per stored tensor
    inside SharedSingularValues)."""
    shared = _ACTIVE.get()
    return shared.lookup(x) if shared is not None else reduced_singular_values(float64(x))
