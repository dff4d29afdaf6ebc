"""Reading and writing a run directory safely.

Every file is written under a temporary name, flushed to disk and renamed into place, so a crash
or a full disk never leaves a file, a checkpoint or the `latest` pointer half written. A
checkpoint is a folder built as `.tmp-step_N`, closed by its `checkpoint.json` manifest, renamed
to `step_N`, and only then named by `latest.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pico_format.integrity import checkpoint_problem, disk_full, file_records, honour_umask
from pico_format.layout import (
    CHECKPOINTS,
    SCHEMA_VERSION,
    TMP_PREFIX,
    CheckpointPaths,
    RunPaths,
    parse_step_dirname,
)


class RunFormatError(RuntimeError):
    """A run directory or checkpoint that is missing, incomplete or corrupt."""


# ----------------------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` for the caller to write; then fsync and rename it.

    The one temp-file-and-rename write of the code base: run files, checkpoint manifests, the
    tokenizer and token caches all go through it, so a reader (or a concurrent process writing
    the same cache entry) sees the old file or the whole new one, never half of one. On an
    error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary sibling, fsync and rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RunFormatError(f"Missing file '{path}'.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFormatError(f"Corrupt JSON in '{path}': {err}.") from None


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines log such as a run's ``log.jsonl`` ([] when absent). Blank lines
    and lines that do not parse (a run killed mid-write leaves a torn last line) are dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# ----------------------------------------------------------------------------------------------
# Run identity
# ----------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """run.json: what produced this run, so a resume or an analysis can check it."""

    schema_version: int
    code_version: str
    data_fingerprint: str  # tokenizer + corpus + sequence length + data seed
    model_fingerprint: str  # the model's shape
    created: float = field(default_factory=time.time)
    producer: str = "pico-train"
    extra: dict[str, Any] = field(default_factory=dict)


def write_run_info(run: RunPaths, info: RunInfo) -> None:
    write_json_atomic(run.info, asdict(info))


def read_run_info(run: RunPaths) -> RunInfo:
    raw = read_json(run.info)
    if raw.get("schema_version", 0) > SCHEMA_VERSION:
        raise RunFormatError(
            f"'{run.info}' has schema version {raw['schema_version']}, newer than this code's "
            f"{SCHEMA_VERSION}: upgrade pico."
        )
    try:
        return RunInfo(**raw)
    except TypeError as err:
        raise RunFormatError(f"'{run.info}' is not a pico run file: {err}.") from None


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _raise_disk_error(err: BaseException, what: str) -> None:
    if disk_full(err):
        raise RunFormatError(
            f"Disk full while writing {what}; nothing was replaced (the previous checkpoint and "
            f"the latest pointer are intact). Free space and resume."
        ) from err
    raise err


@contextlib.contextmanager
def checkpoint_transaction(run: RunPaths, step: int) -> Iterator[CheckpointPaths]:
    """Yield a temporary checkpoint folder; on success publish it as step `step`.

    The caller fills the folder; this writes its manifest listing the files with their sizes and
    CRC-32 (see integrity.py), renames it into place (replacing a stale folder of the same step
    left by an interrupted run) and points `latest` at it. Files get the modes the umask grants.
    On any error the temporary folder is removed and nothing else changes; a full disk, however
    the writer reports it, becomes one RunFormatError.
    """
    tmp = run.temporary_checkpoint(step)
    final = run.checkpoint(step)
    if tmp.root.exists():
        shutil.rmtree(tmp.root)
    try:
        tmp.root.mkdir(parents=True)
        yield tmp
        honour_umask(tmp.root)
        write_json_atomic(
            tmp.manifest,
            {
                "schema_version": SCHEMA_VERSION,
                "step": step,
                **file_records(tmp.root),
                "complete": True,
            },
        )
        _fsync_dir(tmp.root)
        replace_folder(
            tmp.root, final.root, run.checkpoints / f"{TMP_PREFIX}stale-{final.root.name}"
        )
        _fsync_dir(run.checkpoints)
        write_json_atomic(run.latest, {"step": step, "path": f"{CHECKPOINTS}/{final.root.name}"})
    except Exception as err:
        shutil.rmtree(tmp.root, ignore_errors=True)
        _raise_disk_error(err, f"checkpoint step {step}")
    except BaseException:
        shutil.rmtree(tmp.root, ignore_errors=True)
        raise


def replace_folder(tmp: Path, final: Path, stale: Path) -> None:
    """Rename the complete folder `tmp` to `final`. An existing `final` is first renamed to
    `stale` and deleted only once `tmp` is in place, so a crash leaves one of the two whole."""
    if not final.exists():
        os.replace(tmp, final)
        return
    shutil.rmtree(stale, ignore_errors=True)
    os.replace(final, stale)
    os.replace(tmp, final)
    shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def folder_transaction(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` whole
    (replace_folder), on any error it is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, final, final.parent / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(ckpt: CheckpointPaths) -> bool:
    return ckpt.manifest.is_file()


def verify_checkpoint(ckpt: CheckpointPaths, *, need_state: bool = False) -> str | None:
    """Check a complete checkpoint's files against the sizes and CRC-32 its manifest records.

    Returns None when it verifies, else one line naming the bad file (need_state: the training
    state must be there too, as a resume needs it).
    """
    try:
        manifest = read_json(ckpt.manifest)
    except RunFormatError as err:
        return str(err)
    if not isinstance(manifest, dict):
        return f"'{ckpt.manifest}' is not a checkpoint manifest"
    problem = checkpoint_problem(ckpt, manifest, need_state=need_state)
    return f"checkpoint '{ckpt.root}': {problem}" if problem else None


def list_checkpoints(run: RunPaths) -> list[int]:
    """Steps of the complete checkpoints, ascending (temporary folders are ignored)."""
    if not run.checkpoints.is_dir():
        return []
    steps = []
    for child in run.checkpoints.iterdir():
        step = parse_step_dirname(child.name)
        if step is not None and is_complete(CheckpointPaths(child)):
            steps.append(step)
    return sorted(steps)


def latest_step(run: RunPaths) -> int | None:
    """The step named by `latest.json`, checked to be a complete checkpoint; None if no pointer."""
    if not run.latest.is_file():
        return None
    pointer = read_json(run.latest)
    if not isinstance(pointer, dict):
        raise RunFormatError(
            f"'{run.latest}' is not a checkpoint pointer (expected a JSON object with a 'step', "
            f"got a {type(pointer).__name__})."
        )
    step = pointer.get("step")
    if not isinstance(step, int) or not is_complete(run.checkpoint(step)):
        raise RunFormatError(
            f"'{run.latest}' names step {step!r}, which is not a complete checkpoint under "
            f"'{run.checkpoints}'."
        )
    return step


def clean_temporary(run: RunPaths) -> list[Path]:
    """Remove what interrupted writes left; return what was removed.

    Temporary files at the run root (`.tmp-latest.json.<pid>`...), temporary checkpoint folders,
    and inside each checkpoint a training state caught mid-pruning (`.tmp-state`: for the 1b
    preset the whole optimizer state). Call it only while holding the run's lock.
    """
    folders = [run.root]
    if run.checkpoints.is_dir():
        folders.append(run.checkpoints)
        folders += [c for c in run.checkpoints.iterdir() if parse_step_dirname(c.name) is not None]
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if child.name.startswith(TMP_PREFIX):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed.append(child)
    return removed


def prune_states(run: RunPaths, keep: int) -> None:
    """Delete the training state of all but the newest `keep` checkpoints (model files stay)."""
    with_state = [s for s in list_checkpoints(run) if run.checkpoint(s).state.is_dir()]
    for step in with_state[:-keep] if keep > 0 else with_state:
        state = run.checkpoint(step).state
        doomed = state.with_name(TMP_PREFIX + state.name)
        os.replace(state, doomed)  # a reader never sees a half-deleted state folder
        shutil.rmtree(doomed)
