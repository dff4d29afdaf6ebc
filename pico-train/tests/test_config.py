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
        ("training.max_step=3", "Did you mean 'training.max_steps'"),
        ("capture.posittions=all", "Did you mean 'capture.positions'"),
        ("model.d_model=100", "not divisible by n_heads"),
        ("model.n_kv_heads=5", "not divisible by n_kv_heads"),
        ("model.n_layers=0", "model.n_layers: must be a positive integer"),
        ("training.max_steps=abc", "training.max_steps: expected int"),
        ("training.micro_batch_size=5", "not a multiple of training.micro_batch_size"),
        ("training.schedule=cosin", "training.schedule"),
        ("capture.positions=first", "capture.positions"),
        ("data.seq_len=999999", "exceeds model.max_seq_len"),
        ("checkpointing.steps=[-1]", "checkpointing.steps"),
        ("data.seq_len=0", "data.seq_len: must be positive"),
        ("data.seq_len=-1", "data.seq_len: must be positive"),
        ("training.lr=.inf", "training.lr: must be a finite number"),
        ("training.lr=.nan", "training.lr: must be a finite number"),
        ("model.rope_theta=.inf", "model.rope_theta: must be a finite number"),
        ("training.warmup_steps=5000", "warmup_steps=100 \\(a tenth of the run\\)"),
        ("training.max_steps=[1", "--set training.max_steps=\\[1, line 1: invalid YAML"),
        ("training.max_steps", "must look like section.key=value"),
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


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ntraining:\n  max_steps: [1\n  lr: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: invalid YAML"):
        load_config(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"preset: tiny\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml, line 2: not UTF-8 text \(byte 0xe9\)"):
        load_config(latin)


def test_checkpoint_steps_past_the_end_are_dropped_with_a_note():
    notes = []
    c = load_config(
        overrides=[
            "training.max_steps=10",
            "training.warmup_steps=1",
            "checkpointing.steps=[0,4,64,512]",
        ],
        note=notes.append,
    )
    assert c.checkpointing.steps == [0, 4]
    assert any("[64, 512]" in n and "dropped" in n for n in notes)


def test_run_dir_defaults_to_the_config_or_preset_name(tmp_path):
    path = tmp_path / "my-experiment.yaml"
    path.write_text("preset: small\n")
    assert load_config(path).run_dir == "runs/my-experiment"
    assert load_config(preset="small").run_dir == "runs/small"
    assert load_config().run_dir == "runs/run"
    assert load_config(path, ["run_dir=elsewhere"]).run_dir == "elsewhere"


def test_suite_vocabulary_on_the_trained_tokenizer_gets_a_note():
    notes = []
    load_config(preset="tiny", note=notes.append)
    assert any("--set model.vocab_size=4096" in n for n in notes)
    notes.clear()
    load_config(preset="demo", note=notes.append)
    assert notes == []


def test_saved_yaml_has_no_anchors():
    from pico_format.yaml_file import dump_yaml

    shared = [1, 2]
    text = dump_yaml({"a": shared, "b": shared})
    assert "&id" not in text and "*id" not in text
