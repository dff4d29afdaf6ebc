"""The randomized column-space basis of CCA/PWCCA (similarity._span_via_sketch) gives what the
SVD gives: checked against a numpy SVD reference, on inputs where the sketch is taken and where
it must refuse (then the SVD is used)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pico_analyze import metrics as M
from pico_analyze.metrics import similarity as S
from pico_analyze.metrics._utils import default_rtol


def low_rank(n: int, p: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(
        r, p, generator=g, dtype=torch.float64
    )


def np_basis(a: np.ndarray, rtol: float) -> np.ndarray:
    a = a - a.mean(0)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return u[:, : int((s > rtol * s[0]).sum())]


def np_pwcca_and_rho(x: np.ndarray, y: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """Reference: SVD bases (numpy), Björck-Golub correlations, PWCCA weights from x."""
    qx, qy = np_basis(x, max(x.shape) * eps), np_basis(y, max(y.shape) * eps)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    alpha = np.abs((qx @ u).T @ (x - x.mean(0))).sum(1)
    rho = np.clip(rho, 0.0, 1.0)
    return float((alpha * rho).sum() / alpha.sum()), rho


def sketch_taken(x: torch.Tensor) -> bool:
    a = S._centered(x, "x")
    return S._span_via_sketch(a, default_rtol(tuple(x.shape), x.dtype)) is not None


CASES = {
    # exactly low rank in float64 (as the heads-concatenated OV activations): the sketch is used
    "rank 20 of 600": (lambda: (low_rank(1500, 600, 20, 1), low_rank(1500, 600, 20, 2)), True),
    # the tiny shape's per-head OV activations: 128 samples, 96 wide, rank 8 (sketch of 24)
    "rank 8 of 96": (lambda: (low_rank(128, 96, 8, 14), low_rank(128, 96, 8, 15)), True),
    "rank 30 of 96 (too close to a quarter)": (
        lambda: (low_rank(128, 96, 30, 16), low_rank(128, 96, 8, 17)),
        False,
    ),
    "rank 100 of 1152 (wider sketch)": (
        lambda: (
            low_rank(1200, 1152, 100, 3),
            low_rank(1200, 1152, 30, 4) + low_rank(1200, 1152, 1, 5),
        ),
        True,
    ),
    "y a linear map of x": (
        lambda: (
            low_rank(1000, 400, 25, 6),
            low_rank(1000, 400, 25, 6) @ low_rank(400, 400, 400, 7),
        ),
        True,
    ),
    # full rank, or a float32 rounding-noise floor above the tolerance: the SVD is used
    "full rank": (lambda: (low_rank(1000, 300, 300, 8), low_rank(1000, 300, 300, 9)), False),
    "float32 noise floor": (
        lambda: (low_rank(1000, 400, 20, 10).float(), low_rank(1000, 400, 20, 11).float()),
        False,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pwcca_and_cca_equal_the_svd_reference(name):
    make, taken = CASES[name]
    x, y = make()
    assert sketch_taken(x) is taken
    eps = float(np.finfo(np.float32 if x.dtype == torch.float32 else np.float64).eps)
    ref, rho_ref = np_pwcca_and_rho(x.double().numpy(), y.double().numpy(), eps)
    rho = M.canonical_correlations(x, y).numpy()
    assert rho.shape == rho_ref.shape
    np.testing.assert_allclose(rho, rho_ref, atol=1e-10)
    assert M.pwcca(x, y) == pytest.approx(ref, abs=1e-10)
    assert M.pwcca(y, x) == pytest.approx(
        np_pwcca_and_rho(y.double().numpy(), x.double().numpy(), eps)[0], abs=1e-10
    )


def test_sketch_refuses_a_singular_value_at_the_threshold():
    """A direction just above the rank tolerance: too close for the sketch's error bound, so
    it returns None and the SVD decides."""
    n, p = 1200, 512
    g = torch.Generator().manual_seed(12)
    u = torch.linalg.qr(torch.randn(n, 11, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(p, 11, generator=g, dtype=torch.float64))[0]
    s = torch.ones(11, dtype=torch.float64)
    s[-1] = 1.5 * max(n, p) * torch.finfo(torch.float64).eps  # 1.5x the tolerance
    a = (u * s) @ v.T
    a = a - a.mean(0)
    assert S._span_via_sketch(a, max(n, p) * torch.finfo(torch.float64).eps) is None


def test_sketch_is_not_tried_on_narrow_inputs():
    a = low_rank(500, 63, 5, 13)  # below 64 wide the SVD is as cheap
    assert S._span_via_sketch(a - a.mean(0), 1e-12) is None
    a = low_rank(500, 64, 5, 13)
    assert S._span_via_sketch(a - a.mean(0), 1e-12) is not None
