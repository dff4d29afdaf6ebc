"""Learning-dynamics capture: row order, gradient scale, position policies, neutrality."""

import pytest
import torch
import torch.nn.functional as F

from pico_format import (
    CAPTURE_SPLITS,
    DEFAULT_CAPTURE_SUFFIXES,
    RESIDUAL,
    CaptureReader,
    RunPaths,
    capture_splits,
    checkpoint_transaction,
    module_name,
)
from pico_train.capture import capture_learning_dynamics, position_indices, select_modules
from pico_train.checkpoint import save_model_files
from pico_train.config import CaptureConfig, ModelConfig
from pico_train.distributed import Dist
from pico_train.model import PicoDecoder

CFG = ModelConfig(
    d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, vocab_size=64, max_seq_len=16
)
DEFAULT_MODULES = [module_name(i, suffix) for i in range(2) for suffix in DEFAULT_CAPTURE_SUFFIXES]


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    model = PicoDecoder(CFG)
    rows = torch.randint(0, 64, (6, 17))
    return model, rows, RunPaths(tmp_path)


def _capture(model, rows, run, step=0, **cfg):
    cfg = CaptureConfig(**{"batch_size": 6, "micro_batch_size": 4, **cfg})
    with checkpoint_transaction(run, step) as ckpt:
        capture_learning_dynamics(
            model, cfg, step, {s: rows for s in cfg.splits}, Dist(), None, ckpt
        )
        save_model_files(ckpt.root, model)  # the captured weights are read from here
    return run.checkpoint(step)


def test_default_modules_in_layer_order(setup):
    model, _, _ = setup
    assert list(select_modules(model, CaptureConfig())) == DEFAULT_MODULES


def test_rows_belong_to_their_sequences(setup):
    model, rows, run = setup
    reader = CaptureReader(_capture(model, rows, run), "eval")
    assert reader.manifest.modules == DEFAULT_MODULES
    assert reader.manifest.token_ids == rows[:, :-1].tolist()
    acts = reader.get("activations", module_name(1, "self_attn.v_proj"))
    assert acts.shape == (6, CFG.n_kv_heads * CFG.head_dim)
    for i in range(6):  # recompute sequence i alone: its last position is row i
        seen = {}
        h = model.model.layers[1].self_attn.v_proj.register_forward_hook(
            lambda m, a, out, seen=seen: seen.setdefault("v", out)
        )
        with torch.no_grad():
            model(rows[i : i + 1, :-1])
        h.remove()
        torch.testing.assert_close(acts[i], seen["v"][0, -1], atol=1e-5, rtol=1e-5)


def test_gradient_is_mean_over_tokens_and_grad_buffers_untouched(setup):
    model, rows, run = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reader = CaptureReader(_capture(model, rows, run), "train")
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    logits = model(rows[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).backward()
    for name in DEFAULT_MODULES:
        expected = model.get_submodule(name).weight.grad
        torch.testing.assert_close(reader.get("gradients", name), expected, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(
            reader.get("weights", name), model.get_submodule(name).weight.detach()
        )
    with torch.no_grad():
        loss = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
    assert reader.manifest.loss == pytest.approx(loss.item(), rel=1e-5)


def test_capture_draws_no_global_randomness(setup):
    model, rows, run = setup
    state = torch.get_rng_state()
    _capture(model, rows, run, positions="sample", n_positions=3)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "policy,rows_per_seq", [("last", 1), ("mean", 1), ("sample", 5), ("all", 16)]
)
def test_position_policies(setup, policy, rows_per_seq):
    model, rows, run = setup
    reader = CaptureReader(
        _capture(model, rows, run, positions=policy, n_positions=5, residual=True), "eval"
    )
    m = reader.manifest
    assert m.positions == policy
    assert module_name(0, RESIDUAL) in m.modules  # the residual stream after block 0
    name = module_name(0, "mlp.down_proj")
    acts = reader.get("activations", name)
    assert acts.shape == (6 * rows_per_seq, CFG.d_model)
    seen = {}
    h = model.get_submodule(name).register_forward_hook(
        lambda mod, a, out: seen.setdefault("o", out)
    )
    with torch.no_grad():
        model(rows[:, :-1])
    h.remove()
    full = seen["o"]  # (6, 16, d)
    expected = {
        "last": full[:, -1],
        "mean": full.mean(1),
        "all": full.flatten(0, 1),
        "sample": full[:, m.position_indices].flatten(0, 1),
    }[policy]
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)
    if policy == "sample":
        assert m.position_indices == position_indices(
            CaptureConfig(positions="sample", n_positions=5), 16
        )
    assert set(capture_splits(reader.ckpt)) == set(CAPTURE_SPLITS)
    blocks = {module_name(layer, RESIDUAL) for layer in range(CFG.n_layers)}
    assert reader.manifest.tensors["gradients"].keys() == set(m.modules) - blocks


def test_unknown_module_pattern_is_an_error(setup):
    model, rows, run = setup
    with pytest.raises(ValueError, match="match no module"):
        _capture(model, rows, run, modules=["layers.*.attention.v_proj"])


def test_compiled_blocks_capture_what_eager_blocks_capture(setup, tmp_path):
    """FSDP2 compiles each block in place; a capture after training must still see the
    projections' outputs (Dynamo does not guard on hooks added after compiling), equal to an
    uncompiled model's."""
    model, rows, run = setup
    compiled = PicoDecoder(CFG)
    compiled.load_state_dict(model.state_dict())
    for block in compiled.model.layers:
        block.compile(backend="eager")
    compiled(rows[:, :-1], rows[:, 1:]).backward()  # training compiles the grad-mode graph
    compiled.zero_grad(set_to_none=True)
    # One capture micro-batch of the training forward's shape: no recompile would trace hooks.
    ref = CaptureReader(_capture(model, rows, run, micro_batch_size=6), "train")
    got = CaptureReader(
        _capture(compiled, rows, RunPaths(tmp_path / "compiled"), micro_batch_size=6), "train"
    )
    for name in DEFAULT_MODULES:
        for kind in ("activations", "gradients"):
            torch.testing.assert_close(got.get(kind, name), ref.get(kind, name))
