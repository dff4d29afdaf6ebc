"""Typed config: presets, YAML + overrides, errors that name the key and the fix."""

import pytest
import yaml

from pico_train.config import ConfigError, checkpoint_steps, config_from_dict, load_config


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "tiny", "training": {"max_steps": 50}}))
    c = load_config(
        path,
        [
            "training.max_steps=200",
            "training.betas=[0.8, 0.9]",
            "checkpointing.steps=[0,1,2]",
            "model.rope_theta=500",
        ],
    )
    assert c.model.d_model == 96 and c.model.n_layers == 12
    assert c.training.max_steps == 200
    assert c.training.betas == (0.8, 0.9)
    assert c.checkpointing.steps == [0, 1, 2]
    assert c.model.rope_theta == 500.0


def test_resolved_config_round_trips():
    c = load_config(overrides=["preset=small", "training.lr=1e-3"])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(c.to_dict())))
    assert again == c


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainig.max_steps=3", "Did you mean 'training'"),
        ("training.max_step=3", "Did you mean 'max_steps'"),
        ("model.d_model=100", "not divisible by n_heads"),
        ("model.n_kv_heads=5", "not divisible by n_kv_heads"),
        ("model.n_layers=0", "model.n_layers: must be a positive integer"),
        ("training.max_steps=abc", "training.max_steps: expected int"),
        ("training.micro_batch_size=5", "not a multiple of training.micro_batch_size"),
        ("training.schedule=cosin", "training.schedule"),
        ("capture.positions=first", "capture.positions"),
        ("data.seq_len=999999", "exceeds model.max_seq_len"),
        ("checkpointing.steps=[5000]", "checkpointing.steps"),
        ("preset=smal", "Did you mean 'small'"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["preset=tiny", "training.max_steps=1000", override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_checkpoint_steps_include_explicit_list_and_final():
    c = load_config(
        overrides=[
            "training.max_steps=250",
            "checkpointing.every=100",
            "checkpointing.steps=[0,1,2,4]",
        ]
    )
    assert checkpoint_steps(c) == {0, 1, 2, 4, 100, 200, 250}


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert {"demo", "tiny", "small", "medium", "large", "1b"} <= set(names)
    for name in names:
        c = load_config(root / f"{name}.yaml")
        assert c.preset == name
