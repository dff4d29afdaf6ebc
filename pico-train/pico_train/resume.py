"""Opening a run directory: a new run, or a resume of the same run.

Reads RUN/run.json, RUN/config.yaml, the `latest` pointer and the checkpoints' manifests through
pico_format (`check_run`, which writes nothing); then writes config.yaml and run.json
(`prepare_run`, once the resume state has been read). A directory that holds something else, or
a run whose model or data differ from the config given, is refused with a message saying what
differs (unless forced). A resume starts from the newest checkpoint whose files verify.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pico_format import (
    SCHEMA_VERSION,
    RunFormatError,
    RunInfo,
    RunPaths,
    clean_temporary,
    latest_step,
    list_checkpoints,
    read_run_info,
    verify_checkpoint,
    write_run_info,
    write_text_atomic,
)
from pico_format.layout import TMP_PREFIX
from pico_format.yaml_file import config_differences, dump_yaml
from pico_train import __version__
from pico_train.checkpoint import model_fingerprint
from pico_train.config import ConfigError, RunConfig, read_yaml


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


@dataclass
class RunPlan:
    """What opening a run decided, before anything is written."""

    resume_step: int | None  # None: a fresh start
    changes: list[str] = field(default_factory=list)  # differences accepted by --force
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that did not verify
    new_run: bool = True  # no run.json yet: write the run's identity


def _is_creation_leftover(run: RunPaths, path: Path) -> bool:
    """Files a killed run creation leaves before run.json exists: the lock, temporary files and
    our own resolved config.yaml (recognised by holding every RunConfig section)."""
    if path.name.startswith(TMP_PREFIX) or path == run.lock:
        return True
    if path == run.config and path.is_file():
        try:
            raw = read_yaml(path)
        except ConfigError:
            return False
        return isinstance(raw, dict) and set(RunConfig.__dataclass_fields__) <= set(raw)
    return False


def _resume_candidate(run: RunPaths) -> tuple[int | None, list[str]]:
    """The newest checkpoint whose files and training state verify, and lines for newer ones
    that do not (each names the bad file)."""
    latest = latest_step(run)
    if latest is None:
        return None, []
    skipped = []
    for step in reversed([s for s in list_checkpoints(run) if s <= latest]):
        ckpt = run.checkpoint(step)
        if not ckpt.state.is_dir() and step != latest:
            continue  # pruned: not a resume point, and nothing to report
        problem = verify_checkpoint(ckpt, need_state=True)
        if problem is None:
            return step, skipped
        skipped.append(problem)
    raise RunFormatError(
        f"no checkpoint of '{run.root}' can be resumed: " + "; ".join(skipped or ["none"]) + "."
    )


def check_run(
    run: RunPaths, config: RunConfig, data_fingerprint: str, *, force: bool = False
) -> RunPlan:
    """Decide how to open `run` for `config` without writing anything.

    Refuses (RunMismatchError) a directory that holds something else, or a run whose model or
    data differ from `config` (data only with force). Resumes from the newest checkpoint that
    verifies.
    """
    new_config = config.to_dict()
    fingerprint = model_fingerprint(config.model)
    if run.info.is_file():
        info = read_run_info(run)
        old_config = read_yaml(run.config) if run.config.is_file() else {}
        if not isinstance(old_config, dict):
            raise RunFormatError(f"'{run.config}' does not hold a config mapping.")
        problems = config_differences(old_config, new_config)
        if info.data_fingerprint != data_fingerprint:
            problems.append(
                f"data fingerprint: {info.data_fingerprint} -> {data_fingerprint} "
                f"(tokenizer or corpus changed)"
            )
        if info.model_fingerprint != fingerprint and not problems:
            problems.append("model shape fingerprint differs")
        if info.model_fingerprint != fingerprint and run.latest.is_file():
            raise RunMismatchError(
                f"'{run.root}' holds checkpoints of a different model ("
                + "; ".join(problems or ["model fingerprint differs"])
                + "); --force can resume with changed data, never with a changed model: use "
                "another run_dir."
            )
        if problems and not force:
            raise RunMismatchError(
                f"'{run.root}' holds a run with a different model or data ("
                + "; ".join(problems)
                + "); use another run_dir, or pass --force to resume anyway."
            )
        step, skipped = _resume_candidate(run)
        return RunPlan(step, problems, skipped, new_run=False)
    if run.root.exists():
        if not run.root.is_dir():
            raise RunMismatchError(f"run_dir '{run.root}' is a file, not a folder.")
        foreign = [p for p in run.root.iterdir() if not _is_creation_leftover(run, p)]
        if foreign:
            raise RunMismatchError(
                f"'{run.root}' is not empty and is not a pico run (no {run.info.name}); choose "
                f"an empty or new run_dir."
            )
    return RunPlan(None)


def prepare_run(
    run: RunPaths,
    config: RunConfig,
    data_fingerprint: str,
    plan: RunPlan,
    hardware: str | None = None,
) -> None:
    """Write what `plan` needs (rank 0, holding the run's lock, after the state was read).

    Leftovers of interrupted writes are removed; config.yaml is written before run.json, and
    run.json marks the run as created, so a kill in between leaves a directory that the next
    start recognises and creates again.
    """
    run.root.mkdir(parents=True, exist_ok=True)
    clean_temporary(run)
    write_text_atomic(run.config, dump_yaml(config.to_dict()))
    fingerprint = model_fingerprint(config.model)
    if plan.new_run:
        write_run_info(
            run,
            RunInfo(
                schema_version=SCHEMA_VERSION,
                code_version=code_version(),
                data_fingerprint=data_fingerprint,
                model_fingerprint=fingerprint,
                extra={"host": socket.gethostname(), "hardware": hardware},
            ),
        )
    elif plan.changes:  # forced: record the new identity
        info = read_run_info(run)
        info.data_fingerprint, info.model_fingerprint = data_fingerprint, fingerprint
        write_run_info(run, info)


__all__ = ["RunMismatchError", "RunPlan", "check_run", "config_differences", "prepare_run"]
