"""AdamW groups and the learning-rate schedule."""

import math

import pytest

from pico_train.config import ModelConfig, TrainingConfig
from pico_train.model import PicoDecoder
from pico_train.optim import build_optimizer, lr_at


def test_no_weight_decay_on_norms_and_embeddings():
    model = PicoDecoder(
        ModelConfig(
            d_model=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            mlp_hidden=64,
            vocab_size=50,
            max_seq_len=16,
        )
    )
    optimizer, names = build_optimizer(model, TrainingConfig(weight_decay=0.1))
    decay, plain = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    plain_names = names[len(decay["params"]) :]
    assert "model.embed_tokens.weight" in plain_names
    assert all("norm" in n or "embed" in n for n in plain_names)
    assert "lm_head.weight" in names[: len(decay["params"])]
    assert len(names) == sum(1 for _ in model.parameters())


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay(schedule):
    t = TrainingConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, schedule=schedule)
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(10, t) == pytest.approx(1.0)
    end = {"cosine": 0.1, "linear": 0.1, "constant": 1.0}[schedule]
    assert lr_at(110, t) == pytest.approx(end)
    mid = {
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)),
        "linear": 0.55,
        "constant": 1.0,
    }[schedule]
    assert lr_at(60, t) == pytest.approx(mid)
    values = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases after warmup
