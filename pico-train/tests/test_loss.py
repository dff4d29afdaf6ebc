"""loss.next_token_loss against plain F.cross_entropy on materialised logits (the reference)."""

import pytest
import torch
import torch.nn.functional as F

from pico_train import loss as loss_mod
from pico_train.config import ModelConfig
from pico_train.loss import IGNORE_INDEX, next_token_loss
from pico_train.model import PicoDecoder


def _inputs(n=37, d=24, v=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.3).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    y[::5] = IGNORE_INDEX
    return h, w, y


def _reference(h, w, y, reduction):
    return F.cross_entropy(h @ w.T, y, ignore_index=IGNORE_INDEX, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_elements", [1 << 28, 400])  # one block; blocks of 3 rows
def test_loss_and_gradients_match_plain_cross_entropy(reduction, chunk_elements, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", chunk_elements)
    h, w, y = _inputs()
    ours = next_token_loss(h, w, y, reduction=reduction)
    gh, gw = torch.autograd.grad(ours, (h, w))
    ref = _reference(h, w, y, reduction)
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(gh, rh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-7)


def test_loss_without_gradients_and_a_scaled_backward(monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", 500)
    h, w, y = _inputs(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(next_token_loss(h, w, y), _reference(h, w, y, "mean"))
    # The gradient made in the forward pass is scaled by whatever multiplies the loss later.
    (3.0 * next_token_loss(h, w, y, reduction="sum")).backward()
    ours = w.grad.clone()
    w.grad = None
    (3.0 * _reference(h, w, y, "sum")).backward()
    torch.testing.assert_close(ours, w.grad, rtol=1e-5, atol=1e-6)  # sum of 30 rows, x3


def test_batched_targets_and_all_ignored():
    h, w, y = _inputs(n=24)
    ours = next_token_loss(h.view(4, 6, -1), w, y.view(4, 6), reduction="sum")
    torch.testing.assert_close(ours, _reference(h, w, y, "sum"), rtol=1e-5, atol=0)
    none = torch.full((24,), IGNORE_INDEX)
    assert next_token_loss(h, w, none, reduction="sum").item() == 0.0
    assert torch.isnan(next_token_loss(h, w, none))  # 0 / 0, as F.cross_entropy


def test_bf16_autocast_close_to_fp32():
    h, w, y = _inputs(n=64, d=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = next_token_loss(h, w, y)
    gh, gw = torch.autograd.grad(ours, (h, w))
    rh, rw = torch.autograd.grad(_reference(h, w, y, "mean"), (h, w))
    assert ours.dtype == torch.float32 and gw.dtype == torch.float32
    torch.testing.assert_close(ours, _reference(h, w, y, "mean"), rtol=2e-2, atol=0)
    torch.testing.assert_close(gw, rw, rtol=5e-2, atol=1e-3)


def test_model_loss_is_cross_entropy_of_its_logits():
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=64,
        vocab_size=97,
        max_seq_len=16,
    )
    model = PicoDecoder(cfg)
    x = torch.randint(0, 97, (3, 16))
    y = torch.randint(0, 97, (3, 16))
    y[0, :4] = IGNORE_INDEX
    logits = model(x)
    ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(model(x, y), ref, rtol=1e-5, atol=0)
    ref_sum = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    torch.testing.assert_close(model(x, y, reduction="sum"), ref_sum, rtol=1e-5, atol=0)
    g_ours = torch.autograd.grad(model(x, y), list(model.parameters()))
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("compile_chunks", [False, True])
def test_compiled_model_gradients_equal_eager(compile_chunks, monkeypatch):
    """The loss inside a compiled model (as training runs on GPUs), over several blocks: every
    parameter's gradient equals the eager model's. (In torch 2.11 a compiled forward that wrote
    into a buffer it then saved for backward gave all-zero gradients; see loss.py.)"""
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", 97 * 10)  # blocks of 10 rows
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, vocab_size=97)
    model = PicoDecoder(cfg)
    x = torch.randint(0, 97, (3, 16))
    y = torch.randint(0, 97, (3, 16))
    params = list(model.parameters())
    eager = torch.autograd.grad(model(x, y), params)
    loss_mod.set_implementation("auto", compile_chunks=compile_chunks)
    try:
        compiled = torch.compile(model, backend="aot_eager")  # AOTAutograd, as inductor sees it
        loss = compiled(x, y)
        grads = torch.autograd.grad(loss, params)
    finally:
        loss_mod.set_implementation("auto")
    torch.testing.assert_close(loss, model(x, y), rtol=1e-6, atol=0)
    for name, a, b in zip([n for n, _ in model.named_parameters()], grads, eager):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=name)


def test_bad_arguments():
    h, w, y = _inputs()
    with pytest.raises(ValueError, match="reduction"):
        next_token_loss(h, w, y, reduction="none")
    with pytest.raises(ValueError, match="not one of"):
        loss_mod.set_implementation("fused")
