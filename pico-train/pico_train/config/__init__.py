"""Typed configuration: nested dataclasses holding every default once (sections.py), built from
a YAML file plus dot-path overrides and a model preset (loading.py), and validated before any
work (validation.py). Everything imports these names from `pico_train.config`.
"""

from pico_train.config.loading import (
    config_from_dict,
    load_config,
    parse_override,
    parse_yaml,
    print_note,
    read_yaml,
)
from pico_train.config.sections import (
    PRESET_TOKENIZERS,
    PRESETS,
    SWEEP_SHAPES,
    CaptureConfig,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    checkpoint_steps,
)
from pico_train.config.validation import validate, validate_model

__all__ = [
    "PRESETS",
    "PRESET_TOKENIZERS",
    "SWEEP_SHAPES",
    "CaptureConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "LoggingConfig",
    "ModelConfig",
    "RunConfig",
    "TrainingConfig",
    "checkpoint_steps",
    "config_from_dict",
    "load_config",
    "parse_override",
    "parse_yaml",
    "print_note",
    "read_yaml",
    "validate",
    "validate_model",
]
