"""training.precision=fp8: config checks, refusal off float8 GPUs, and the module swap keeping
every name (the GPU run itself is in test_gpu.py)."""

import pytest
import torch

from pico_format import RunPaths
from pico_train.config import ConfigError, ModelConfig, load_config
from pico_train.model import PicoDecoder
from pico_train.train import TrainingError, train

from tiny_runs import TINY, tiny_config

FP8_SHAPE = ["model.d_model=64", "model.mlp_hidden=128", "model.n_heads=4", "model.n_kv_heads=2"]


def test_fp8_needs_projection_widths_that_are_multiples_of_16():
    odd = ["model.d_model=40", "training.precision=fp8"]  # head_dim 10: kv width 20
    with pytest.raises(ConfigError, match=r"multiples of 16; model.d_model=40, model.n_kv_heads"):
        load_config(overrides=[*TINY, *odd])
    config = load_config(overrides=[*TINY, *FP8_SHAPE, "training.precision=fp8"])
    assert config.training.precision == "fp8"
    with pytest.raises(ConfigError, match="not one of auto, fp32, bf16, fp8"):
        load_config(overrides=[*TINY, "training.precision=fp4"])


def test_fp8_is_refused_on_cpu_before_anything_is_written(tmp_path):
    config = tiny_config(tmp_path / "run", *FP8_SHAPE, "training.precision=fp8")
    with pytest.raises(TrainingError, match="fp8 needs a CUDA GPU; this run is on cpu"):
        train(config, device="cpu")
    run = RunPaths(tmp_path / "run")
    assert not run.log.exists() and not run.checkpoints.exists()


def test_converting_the_blocks_keeps_names_and_parameters():
    pytest.importorskip("torchao")
    from torchao.float8.float8_linear import Float8Linear

    from pico_train.float8 import convert_blocks

    torch.manual_seed(0)
    model = PicoDecoder(
        ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_blocks(model.model.layers) == 2 * 7  # q, k, v, o, gate, up, down per block
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert isinstance(model.model.layers[1].mlp.down_proj, Float8Linear)
    assert type(model.lm_head) is torch.nn.Linear  # the head stays with the loss (loss.py)
