"""Opening a run directory: a new run, or a resume of the same run.

Reads RUN/run.json, RUN/config.yaml and the `latest` pointer through pico_format; writes
run.json and config.yaml for a new run (and config.yaml, plus run.json when forced, on a resume),
after removing what an interrupted checkpoint write left behind. A directory that holds something
else, or a run whose model or data differ from the config given, is refused with a message saying
what differs (unless forced). Only rank 0 calls :func:`open_run`; train.py broadcasts its answer.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml

from pico_format import (
    SCHEMA_VERSION,
    RunInfo,
    RunPaths,
    clean_temporary,
    latest_step,
    read_run_info,
    write_run_info,
    write_text_atomic,
)
from pico_train import __version__
from pico_train.checkpoint import model_fingerprint
from pico_train.config import RunConfig


class RunMismatchError(RuntimeError):
    """The run directory belongs to another run (different model or data)."""


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict, sections=("model", "data")) -> list[str]:
    """Dot-path keys of `sections` whose values differ, as 'key: old -> new'."""
    before = _flatten({s: old.get(s, {}) for s in sections})
    after = _flatten({s: new.get(s, {}) for s in sections})
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def open_run(
    run: RunPaths,
    config: RunConfig,
    data_fingerprint: str,
    *,
    force: bool = False,
    hardware: str | None = None,
) -> int | None:
    """Prepare `run` for `config`; return the step to resume from, or None for a fresh start."""
    if run.info.is_file():
        return _reopen(run, config, data_fingerprint, force)
    if run.root.exists() and any(run.root.iterdir()):
        raise RunMismatchError(
            f"'{run.root}' is not empty and is not a pico run (no {run.info.name}); choose an "
            f"empty or new run_dir."
        )
    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_run_info(
        run,
        RunInfo(
            schema_version=SCHEMA_VERSION,
            code_version=code_version(),
            data_fingerprint=data_fingerprint,
            model_fingerprint=model_fingerprint(config.model),
            extra={"host": socket.gethostname(), "hardware": hardware},
        ),
    )
    return None


def _reopen(run: RunPaths, config: RunConfig, data_fingerprint: str, force: bool) -> int | None:
    """An existing run: refuse a different model (or, unless forced, different data)."""
    new_config = config.to_dict()
    fingerprint = model_fingerprint(config.model)
    info = read_run_info(run)
    old_config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    problems = config_differences(old_config or {}, new_config)
    if info.data_fingerprint != data_fingerprint:
        problems.append(
            f"data fingerprint: {info.data_fingerprint} -> {data_fingerprint} "
            f"(tokenizer or corpus changed)"
        )
    if info.model_fingerprint != fingerprint and not problems:
        problems.append("model shape fingerprint differs")
    if info.model_fingerprint != fingerprint and run.latest.is_file():
        raise RunMismatchError(
            f"'{run.root}' holds checkpoints of a different model:\n  "
            + "\n  ".join(problems or ["model fingerprint differs"])
            + "\n--force can resume with changed data, never with a changed model: use "
            "another run_dir."
        )
    if problems and not force:
        raise RunMismatchError(
            f"'{run.root}' holds a run with a different model or data:\n  "
            + "\n  ".join(problems)
            + "\nUse another run_dir, or pass --force to resume anyway."
        )
    clean_temporary(run)
    if problems:  # forced: record the new identity
        info.data_fingerprint, info.model_fingerprint = data_fingerprint, fingerprint
        write_run_info(run, info)
    write_text_atomic(run.config, yaml.safe_dump(new_config, sort_keys=False))
    return latest_step(run)


__all__ = ["RunMismatchError", "open_run", "config_differences"]
