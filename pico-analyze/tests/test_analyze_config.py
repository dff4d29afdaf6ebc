"""The analysis config: parsing, defaults, labels, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pico_analyze.components import ComponentSpec
from pico_analyze.config import (
    ConfigError,
    StepRange,
    config_from_dict,
    default_metrics,
    load_config,
)

V_ACT = {"type": "simple", "kind": "activations", "module": "self_attn.v_proj"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metric": []}, "unknown key 'metric'.*Did you mean 'metrics'"),
        ({"stpes": [0]}, "unknown key 'stpes'.*Did you mean 'steps'"),
        (
            {"metrics": [{"metric": "cka", "components": [V_ACT], "setting": {}}]},
            r"metrics\[0\]: unknown key 'setting'.*'settings'",
        ),
        ({"metrics": [{"metric": "ckaa", "components": [V_ACT]}]}, "unknown metric 'ckaa'.*'cka'"),
        (
            {"metrics": [{"metric": "cka", "components": [V_ACT], "settings": {"debias": True}}]},
            "'debias' is not a setting of cka.*'debiased'",
        ),
        ({"metrics": [{"metric": "cka", "components": ["v_act"]}]}, "no component named 'v_act'"),
        (
            {
                "metrics": [
                    {
                        "metric": "cka",
                        "components": [
                            {"type": "simple", "kind": "weights", "module": "mlp.down_proj"}
                        ],
                    }
                ]
            },
            "cka measures activations, not weights",
        ),
        (
            {"components": {"x": {"type": "ov_circuit", "kind": "weights", "head": "both"}}},
            r"components.x: unknown key 'head'.*'heads'",
        ),
        ({"steps": {"start": 0, "end": 10}}, "steps: unknown key 'end'"),
        (
            {
                "metrics": [
                    {"metric": "cka", "components": [V_ACT]},
                    {"metric": "cka", "components": [V_ACT]},
                ]
            },
            r"metrics\[0\] and metrics\[1\] both write 'cka@last'.*`name`",
        ),
        ({"target_step": "final"}, "target_step: expected one of"),
        (
            {"compare": {"metrics": [{"metric": "gini", "components": [V_ACT]}]}},
            "gini is not comparative",
        ),
    ],
)
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_yaml_file_with_components_labels_and_aliases(tmp_path):
    path = tmp_path / "analysis.yaml"
    path.write_text(
        "steps: {start: 0, stop: 100, every: 20}\n"
        "layers: [0, 1]\n"
        "splits: [val]\n"
        "components:\n"
        "  v_act: {type: simple, kind: activations, module: attention.v_proj}\n"
        "  ov_w: {type: ov_circuit, kind: weights, heads: both}\n"
        "metrics:\n"
        "  - {metric: cka, components: [v_act]}\n"
        "  - {metric: cka, components: [v_act], settings: {debiased: false}, target: previous}\n"
        "  - {metric: effective_rank, components: [ov_w, v_act]}\n"
    )
    cfg = load_config(path)
    assert cfg.splits == ["eval"]  # the original's val is our eval
    assert isinstance(cfg.steps, StepRange) and cfg.select_steps([0, 10, 20, 40, 120]) == [
        0,
        20,
        40,
    ]
    assert cfg.components["v_act"].module == "self_attn.v_proj"  # original name mapped
    assert [e.label for e in cfg.metrics] == [
        "cka@last",
        "cka[debiased=False]@previous",
        "effective_rank",
    ]
    assert cfg.metrics[2].components == [
        ComponentSpec("ov_circuit", "weights", heads="both"),
        ComponentSpec("simple", "activations", "self_attn.v_proj"),
    ]
    with pytest.raises(ConfigError, match="analysis.yaml: .*unknown key"):
        path.write_text("metricz: []\n")
        load_config(path)


def test_default_analysis_contents():
    entries = {e.label: e for e in default_metrics()}
    assert set(entries) >= {
        "cka@last",
        "effective_rank",
        "proportional_effective_rank",
        "condition_number",
        "gini",
        "hoyer",
        "frobenius_norm",
        "spectral_norm",
        "relative_weight_change@previous",
        "gradient_cosine_similarity@previous",
    }
    assert entries["cka@last"].splits == ["eval"]
    assert ComponentSpec("ov_circuit", "weights") in entries["effective_rank"].components
    # Only the modules a run captured are analysed by default.
    only_v = {e.label: e for e in default_metrics(["self_attn.v_proj"])}
    assert {c.module for c in only_v["cka@last"].components} == {"self_attn.v_proj"}
    with_residual = {e.label: e for e in default_metrics(["self_attn.v_proj", "residual"])}
    assert {c.module for c in with_residual["cka@last"].components} == {
        "self_attn.v_proj",
        "residual",
    }
    assert {c.module for c in with_residual["gini"].components} == {"self_attn.v_proj"}
    cfg = config_from_dict({"splits": ["train"]})  # defaults pin their own splits
    assert cfg.metrics[0].splits == ["eval"]


def test_example_analysis_config_runs(pico_run, tmp_path):
    """examples/analysis.yaml (shown in the README) is valid and runs end to end."""
    import yaml

    from pico_analyze import analyze_run

    path = Path(__file__).resolve().parents[2] / "examples" / "analysis.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.pop("steps")  # the example names the demo's steps; this synthetic run has others
    result = analyze_run(pico_run, raw, tmp_path / "out", progress=False)
    labels = {r.metric for r in result.rows}
    assert {"cka@last", "cka[debiased=False]@last", "procrustes_prev", "effective_rank"} <= labels
