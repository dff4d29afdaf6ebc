"""The pico-decoder: causality, KV-cache generation, compile, presets, init."""

import pytest
import torch

from pico_train.config import PRESETS, ModelConfig
from pico_train.model import PicoDecoder, parameter_counts, sample_next, training_flops_per_token

MHA = ModelConfig(
    d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=64, vocab_size=97, max_seq_len=64
)
GQA = ModelConfig(
    d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, vocab_size=97, max_seq_len=64
)


@pytest.fixture(params=[MHA, GQA], ids=["mha", "gqa"])
def model(request):
    torch.manual_seed(0)
    return PicoDecoder(request.param).eval()


def test_causality(model):
    x = torch.randint(0, 97, (2, 24))
    base = model(x)
    for t in (0, 7, 23):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 97
        out = model(y)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t:], base[:, t:])


def test_kv_cache_matches_full_forward(model):
    x = torch.randint(0, 97, (2, 20))
    from pico_train.model import KVCache

    cache = KVCache(model.config, 2, 20, "cpu", torch.float32)
    a = model(x[:, :12], cache=cache)
    b = model(x[:, 12:15], cache=cache)  # a multi-token chunk on top of a cache
    c = model(x[:, 15:16], cache=cache)
    full = model(x[:, :16])
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_and_without_cache(model):
    prompt = torch.randint(0, 97, (3, 5))
    cached = model.generate(prompt, 30, use_cache=True)
    uncached = model.generate(prompt, 30, use_cache=False)
    assert cached.shape == (3, 35)
    assert torch.equal(cached, uncached)


def test_sampling_is_seedable_and_respects_top_p(model):
    prompt = torch.randint(0, 97, (2, 4))
    runs = [
        model.generate(
            prompt, 10, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7)
        )
        for _ in range(2)
    ]
    assert torch.equal(*runs)
    logits = torch.tensor([[5.0, 4.0, -10.0, -10.0]])
    picks = {
        sample_next(logits, 1.0, 0.5, torch.Generator().manual_seed(i)).item() for i in range(50)
    }
    assert picks == {0}  # token 0 alone holds over half the mass
    assert sample_next(logits, 0.0, 1.0).item() == 0


def test_generate_stops_at_eos(model):
    prompt = torch.randint(0, 97, (1, 3))
    greedy = model.generate(prompt, 5)
    eos = int(greedy[0, 3])  # the first generated token
    out = model.generate(prompt, 20, eos_token_id=eos)
    assert out.shape[1] == 4


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = PicoDecoder(GQA)
    x = torch.randint(0, 97, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x, x)
    loss.backward()
    torch.testing.assert_close(loss, model(x, x))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("tiny", 11_282_784),
        ("small", 64_595_328),
        ("medium", 181_095_168),
        ("large", 569_808_384),
        ("1b", 1_457_596_416),
        ("demo", 2_032_768),
    ],
)
def test_preset_parameter_counts(name, expected):
    assert parameter_counts(PRESETS[name])["total"] == expected


def test_closed_form_counts_match_modules():
    for cfg in (MHA, GQA, PRESETS["demo"]):
        model = PicoDecoder(cfg)
        counts = parameter_counts(cfg)
        assert sum(p.numel() for p in model.parameters()) == counts["total"]
        body = sum(
            p.numel()
            for n, p in model.named_parameters()
            if "embed_tokens" not in n and "lm_head" not in n
        )
        assert body == counts["non_embedding"]


@pytest.mark.parametrize("cfg", [MHA, GQA], ids=["mha", "gqa"])
def test_flops_per_token_equal_the_counted_matmuls_of_a_training_step(cfg):
    """The formula against a measurement: torch's FlopCounterMode counts the multiply-adds of
    every matrix multiply in one forward and backward. Attention runs in the math backend, which
    computes the full T x T scores and their backward as plain matmuls (the convention of the
    formula: no causal halving)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = PicoDecoder(cfg)
    batch, seq_len = 3, cfg.max_seq_len
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids[:, :-1], targets=ids[:, 1:]).backward()
    measured = counter.get_total_flops()
    assert measured > 0
    assert training_flops_per_token(cfg, seq_len) * batch * seq_len == measured


def test_scaled_normal_init():
    torch.manual_seed(0)
    cfg = PRESETS["demo"]
    model = PicoDecoder(cfg)
    std = lambda p: p.detach().std().item()
    assert abs(std(model.model.embed_tokens.weight) - 0.02) < 2e-3
    assert abs(std(model.model.layers[0].self_attn.q_proj.weight) - 0.02) < 2e-3
    expected = 0.02 / (2 * cfg.n_layers) ** 0.5
    assert abs(std(model.model.layers[0].mlp.down_proj.weight) - expected) < 1e-3
    assert torch.all(model.model.norm.weight == 1)
    legacy = PicoDecoder(ModelConfig(**{**cfg.__dict__, "init": "pytorch_default"}))
    assert std(legacy.model.embed_tokens.weight) > 0.9  # nn.Embedding's N(0, 1)


def test_too_long_input_is_refused(model):
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
