"""YAML files, read and written one way by both packages.

Reads a YAML file (a run's config.yaml, a training config, an analysis config) and turns a syntax
or encoding error into one line naming the file and the line: `FILE, line N: problem`. Writes
plain data as YAML in key order, without `&id001` anchors for values that repeat. Also the
config helpers both packages' error messages share: dot-path flattening, the differences between
two configs, and the "did you mean" hint for an unknown key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml


class YAMLFileError(ValueError):
    """A YAML file or value that cannot be parsed; the message names the source and line."""


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; errors become `SOURCE, line N: invalid YAML (problem).`"""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        detail = f"{context}: {problem}" if context else problem
        raise YAMLFileError(f"{source}{where}: invalid YAML ({detail}).") from None


def read_yaml(path: str | Path) -> Any:
    """Parse a UTF-8 YAML file (YAMLFileError names the file and line of any problem)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise YAMLFileError(f"{path}: cannot read: {err.strerror or err}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise YAMLFileError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file "
            f"as UTF-8."
        ) from None
    return parse_yaml(text, str(path))


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    """YAML text of plain data: keys in order, no anchors or aliases."""
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False)


__all__ = ["YAMLFileError", "dump_yaml", "parse_yaml", "read_yaml"]


def flatten(d: dict | None, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dot-path keys (``{"data": {"seq_len": 8}}`` ->
    ``{"data.seq_len": 8}``); None counts as empty."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(
    old: dict, new: dict, sections=("model", "data"), between: str = "->"
) -> list[str]:
    """Dot-path keys of the config `sections` whose values differ, sorted, as
    'key: OLD BETWEEN NEW' (a key missing on one side reads as None)."""
    a = flatten({s: old.get(s, {}) for s in sections})
    b = flatten({s: new.get(s, {}) for s in sections})
    return [
        f"{k}: {a.get(k)!r} {between} {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def did_you_mean(key: str, options: list[str], prefix: str = "") -> str:
    """A hint for an unknown `key`: the closest of `options` in full (`prefix` + option, e.g.
    'training.max_steps'), or all of them when none is close."""
    match = difflib.get_close_matches(str(key), options, n=1, cutoff=0.5)
    if match:
        return f" Did you mean '{prefix}{match[0]}'?"
    return f" Valid keys: {', '.join(prefix + o for o in options)}."
