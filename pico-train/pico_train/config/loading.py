"""Building a RunConfig: YAML file + dot-path overrides (``--set training.max_steps=200``) + preset.

Unknown keys and impossible values fail here (ConfigError) with a message naming the key and what
would fix it; valid but probably unintended settings are printed as notes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pico_format import (
    yaml_file,
)
from pico_format.yaml_file import YAMLFileError, did_you_mean
from pico_train.config.sections import PRESET_TOKENIZERS, PRESETS, ConfigError, RunConfig
from pico_train.config.validation import validate


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax or encoding error names the file and line (ConfigError)."""
    try:
        return yaml_file.read_yaml(path)
    except YAMLFileError as err:
        raise ConfigError(str(err)) from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; errors become one line: `SOURCE, line N: problem` (ConfigError)."""
    try:
        return yaml_file.parse_yaml(text, source)
    except YAMLFileError as err:
        raise ConfigError(str(err)) from None


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or fail naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], path)
        for hint_option in inner:  # e.g. bool | int: the first type the value is
            try:
                return _coerce(value, hint_option, path)
            except ConfigError:
                continue
        names = " or ".join("true/false" if h is bool else h.__name__ for h in inner)
        raise ConfigError(f"{path}: expected {names}, got {value!r}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}.")
        item_hints = args if origin is tuple else (args[0],) * len(value)
        if origin is tuple and len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}.")
        out = [_coerce(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, item_hints))]
        return tuple(out) if origin is tuple else out
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true or false, got {value!r}.")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}.")
        try:
            number = float(value) if hint is float else value
            if hint is int:
                number = int(value) if isinstance(value, str) else value
                if isinstance(number, float):
                    if not number.is_integer():
                        raise ValueError
                    number = int(number)
                if not isinstance(number, int):
                    raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}.") from None
        if hint is float and not math.isfinite(number):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}.")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], path: str, base: Any = None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = dataclasses.replace(base) if base is not None else cls()
    for key, value in raw.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            close = did_you_mean(key, names, f"{path}." if path else "")
            raise ConfigError(f"Unknown config key '{full}'.{close}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value or {}, full, getattr(obj, key))
        else:
            value = _coerce(value, hint, full)
        setattr(obj, key, value)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(
            f"Override '{text}' must look like section.key=value (with '=', no spaces)."
        )
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"Override '{text}': '{key}' is not a dot-path key like training.lr.")
    return keys, parse_yaml(value, f"--set {text}") if value.strip() else None


def print_note(message: str) -> None:
    """Print a note about an adjusted config on stderr (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {message}", file=sys.stderr, flush=True)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
    *,
    note: Callable[[str], None] | None = print_note,
) -> RunConfig:
    """YAML file (optional) + dot-path overrides + preset -> validated RunConfig.

    Harmless adjustments (explicit checkpoint steps past the end, dropped) and doubtful choices
    (an embedding table much larger than the tokenizer) are reported through `note`.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist.")
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file '{path}' must hold a mapping of sections.")
        raw = loaded or {}
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override '{text}': '{k}' is not a section.")
        node[keys[-1]] = value
    if preset is not None:
        raw["preset"] = preset
    name = raw.get("preset")
    base = RunConfig()
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset '{name}'.{did_you_mean(str(name), list(PRESETS))}")
        base.model = dataclasses.replace(PRESETS[name])
        base.data = dataclasses.replace(base.data, tokenizer=PRESET_TOKENIZERS.get(name))
    config = _build(RunConfig, raw, "", base)
    if config.run_dir is None:
        name = Path(path).stem if path is not None else config.preset or "run"
        config.run_dir = f"runs/{name}"
    notes = _adjust(config)
    validate(config)
    for message in notes + _doubts(config):
        if note is not None:
            note(message)
    return config


def _adjust(config: RunConfig) -> list[str]:
    """Drop explicit checkpoint steps past the end of the run; say so."""
    checkpointing, max_steps = config.checkpointing, config.training.max_steps
    late = [step for step in checkpointing.steps if step > max_steps]
    if not late:
        return []
    checkpointing.steps = [step for step in checkpointing.steps if step <= max_steps]
    return [
        f"checkpointing.steps {late} lie beyond training.max_steps={max_steps}; "
        f"dropped (the final step is always saved)."
    ]


def _doubts(config: RunConfig) -> list[str]:
    """Valid but probably unintended settings."""
    out = []
    vocab, tokens = config.model.vocab_size, config.data.tokenizer_vocab_size
    if config.data.tokenizer is None and vocab > 2 * tokens:
        fit = -(-tokens // 64) * 64
        out.append(
            f"model.vocab_size={vocab} but the trained tokenizer has {tokens} tokens: "
            f"{vocab - tokens} embedding rows are never used and the first loss is about "
            f"ln({vocab})={math.log(vocab):.1f}. --set model.vocab_size={fit} sizes the model "
            f"to the tokenizer."
        )
    return out


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Rebuild a resolved config (as written in a run directory)."""
    config = _build(RunConfig, raw, "")
    validate(config)
    return config
