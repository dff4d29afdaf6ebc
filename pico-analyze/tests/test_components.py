"""Components: OV/QK circuits against explicit per-head products and the model itself."""

from __future__ import annotations

import pytest
import torch

from pico_analyze.components import (
    ComponentSpec,
    build,
    heads_side_by_side,
    ov_activations,
    ov_gradients,
    ov_weight_factors,
    ov_weights,
    qk_weights,
)
from pico_analyze.load import MissingData, ModelShape
from pico_format.modules import module_name

SHAPE = ModelShape(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8)


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def attn():
    d, hd, H, K = 32, 8, 4, 2
    return {
        "w_q": rand(H * hd, d, seed=1),
        "w_k": rand(K * hd, d, seed=2),
        "w_v": rand(K * hd, d, seed=3),
        "w_o": rand(d, H * hd, seed=4),
        "g_v": rand(K * hd, d, seed=5),
        "g_o": rand(d, H * hd, seed=6),
    }


def test_ov_weights_equal_explicit_per_head_products(attn):
    m = ov_weights(attn["w_v"], attn["w_o"], SHAPE)
    assert m.shape == (4, 32, 32)
    for h in range(4):
        g = h // 2  # GQA: heads 0, 1 read kv head 0; heads 2, 3 read kv head 1
        w_o_h = attn["w_o"][:, h * 8 : (h + 1) * 8]  # (d, hd)
        w_v_g = attn["w_v"][g * 8 : (g + 1) * 8, :]  # (hd, d)
        torch.testing.assert_close(m[h], w_o_h @ w_v_g)
        assert torch.linalg.matrix_rank(m[h]) == 8
    heads = heads_side_by_side(*ov_weight_factors(attn["w_v"], attn["w_o"], SHAPE))
    concat = heads.view(32, 4 * 32)  # [M_1 | ... | M_H], no copy
    for h in range(4):
        assert torch.equal(heads[:, h], m[h])  # the same products, bit for bit
        assert torch.equal(concat[:, h * 32 : (h + 1) * 32], m[h])


def test_ov_weights_sum_to_the_attention_output_map(attn):
    # With every head attending to one token, the layer's output is x @ (sum_h M_h)^T.
    x = rand(5, 32, seed=9)
    v = x @ attn["w_v"].T  # (n, K*hd)
    repeated = v.view(5, 2, 8).repeat_interleave(2, dim=1).reshape(5, 32)  # GQA expansion
    out = repeated @ attn["w_o"].T
    m = ov_weights(attn["w_v"], attn["w_o"], SHAPE)
    torch.testing.assert_close(out, x @ m.sum(0).T)


def test_ov_activations_equal_x_times_ov_weights(attn):
    x = rand(6, 32, seed=10)
    v_out = (x @ attn["w_v"].T).float()  # the captured v_proj output
    a = ov_activations(v_out, attn["w_o"], SHAPE)
    m = ov_weights(attn["w_v"], attn["w_o"], SHAPE)
    assert a.shape == (4, 6, 32) and a.dtype == torch.float64
    for h in range(4):
        torch.testing.assert_close(a[h], x @ m[h].T, rtol=1e-5, atol=1e-5)


def test_ov_gradient_is_the_first_order_change_of_m(attn):
    d_m = ov_gradients(attn["g_v"], attn["g_o"], attn["w_v"], attn["w_o"], SHAPE)
    eps = 1e-6
    stepped = ov_weights(attn["w_v"] - eps * attn["g_v"], attn["w_o"] - eps * attn["g_o"], SHAPE)
    now = ov_weights(attn["w_v"], attn["w_o"], SHAPE)
    torch.testing.assert_close((now - stepped) / eps, d_m, rtol=1e-4, atol=1e-4)
    for h in range(4):
        g = h // 2
        explicit = (
            attn["g_o"][:, h * 8 : (h + 1) * 8] @ attn["w_v"][g * 8 : (g + 1) * 8]
            + attn["w_o"][:, h * 8 : (h + 1) * 8] @ attn["g_v"][g * 8 : (g + 1) * 8]
        )
        torch.testing.assert_close(d_m[h], explicit)


def test_ov_gradient_matches_autograd_velocity():
    """With real gradients of a loss through the OV map, dM is d/dt M(W - t G) at t=0."""
    w_v = rand(16, 32, seed=1).requires_grad_()
    w_o = rand(32, 32, seed=2).requires_grad_()
    x = rand(10, 32, seed=3)
    m = ov_weights(w_v, w_o, SHAPE)  # differentiable
    loss = (x @ m.sum(0).T).square().mean()
    g_v, g_o = torch.autograd.grad(loss, (w_v, w_o))
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    m_t = ov_weights(w_v.detach() - t * g_v, w_o.detach() - t * g_o, SHAPE)
    velocity = torch.stack(
        [torch.autograd.grad(m_t[h].sum(), t, retain_graph=True)[0] for h in range(4)]
    )
    d_m = ov_gradients(g_v, g_o, w_v.detach(), w_o.detach(), SHAPE)
    torch.testing.assert_close(-velocity, d_m.sum((1, 2)))


def test_qk_weights(attn):
    qk = qk_weights(attn["w_q"], attn["w_k"], SHAPE)
    for h in range(4):
        g = h // 2
        explicit = attn["w_q"][h * 8 : (h + 1) * 8].T @ attn["w_k"][g * 8 : (g + 1) * 8]
        torch.testing.assert_close(qk[h], explicit)


def test_build_reads_only_what_it_needs_and_reports_missing(attn):
    held = {
        ("weights", module_name(1, "self_attn.v_proj")): attn["w_v"],
        ("weights", module_name(1, "self_attn.o_proj")): attn["w_o"],
    }

    def get(kind, module):
        if (kind, module) not in held:
            raise MissingData(f"{kind} of {module} not held")
        return held[(kind, module)]

    values = build(ComponentSpec("ov_circuit", "weights", heads="both"), 1, get, SHAPE)
    assert [(v.component, v.head) for v in values] == [
        ("ov_circuit", 0),
        ("ov_circuit", 1),
        ("ov_circuit", 2),
        ("ov_circuit", 3),
        ("ov_circuit_concat", None),
    ]
    with pytest.raises(MissingData, match="gradients"):
        build(ComponentSpec("ov_circuit", "gradients"), 1, get, SHAPE)
    with pytest.raises(ValueError, match="o_proj"):
        ov_weights(attn["w_v"], attn["w_o"][:, :16], SHAPE)
    assert ComponentSpec("qk_circuit", "activations").validate() is not None
    assert ComponentSpec("simple", "weights").validate() is not None
