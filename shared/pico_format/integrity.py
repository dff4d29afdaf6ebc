"""Checkpoint integrity: the size and CRC-32 of every file, recorded and verified.

`file_records(folder)` reads a finished checkpoint folder and returns what `checkpoint.json`
stores under "files" (a sorted name list, as before) plus "sizes" and "crc32" (name -> value).
`checkpoint_problem(ckpt, need_state)` reads a checkpoint back and names the first file that is
missing, truncated or altered, or returns None. The CRC-32 (zlib) covers a whole file up to
FULL_CRC_BYTES; of a larger one (the 1b preset's weights and optimizer state: GBs, where zlib's
few hundred MB/s would cost most of a minute per checkpoint) only the first and last
SAMPLE_BYTES, which with the exact size catch truncation, torn writes and damaged headers. It
is not a defence against tampering. Checkpoints written before these records existed are
checked for presence only.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zlib
from pathlib import Path

from pico_format.layout import STATE, CheckpointPaths

_CHUNK = 1 << 22
FULL_CRC_BYTES = 256 << 20
SAMPLE_BYTES = 4 << 20


def crc32_of(path: str | Path) -> str:
    """CRC-32 of the whole file, or of its first and last SAMPLE_BYTES past FULL_CRC_BYTES."""
    crc = 0
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size > FULL_CRC_BYTES:
            crc = zlib.crc32(f.read(SAMPLE_BYTES))
            f.seek(size - SAMPLE_BYTES)
            return f"{zlib.crc32(f.read(SAMPLE_BYTES), crc):08x}"
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def file_records(folder: Path) -> dict[str, object]:
    """{"files": [...], "sizes": {...}, "crc32": {...}} for every file under `folder`."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return {
        "files": files,
        "sizes": {name: (folder / name).stat().st_size for name in files},
        "crc32": {name: crc32_of(folder / name) for name in files},
    }


def _in_state(name: str) -> bool:
    return Path(name).parts[0] == STATE


def checkpoint_problem(
    ckpt: CheckpointPaths, manifest: dict, *, need_state: bool, checksums: bool = True
) -> str | None:
    """The first problem with the files `manifest` (checkpoint.json) lists, or None.

    The training state may be absent as a whole (pruned by keep_states) unless `need_state`.
    """
    files = manifest.get("files")
    if not isinstance(files, list):
        return f"{ckpt.manifest.name} lists no files"
    sizes = manifest.get("sizes") or {}
    crcs = manifest.get("crc32") or {}
    state_pruned = not ckpt.state.exists()
    for name in files:
        if _in_state(name) and state_pruned:
            if need_state:
                return "its training state was pruned (checkpointing.keep_states)"
            continue
        path = ckpt.root / name
        if not path.is_file():
            return f"{name} is missing"
        if name in sizes and path.stat().st_size != sizes[name]:
            got = path.stat().st_size
            return f"{name} is truncated or altered ({got} bytes, expected {sizes[name]})"
        if checksums and name in crcs and crc32_of(path) != crcs[name]:
            return f"{name} is corrupt (CRC-32 differs from the one recorded)"
    return None


def honour_umask(folder: Path) -> None:
    """Give every file and folder under `folder` the mode the umask grants new files.

    Some writers (safetensors) create files 0600; a run directory shared with colleagues
    must be readable like any other file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        base = 0o777 if path.is_dir() else 0o666
        mode = base & ~mask
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)


def disk_full(err: BaseException) -> bool:
    """Whether `err` reports a full disk or quota: an OSError, or a writer's wrapped one
    (safetensors says "... I/O error: No space left on device (os error 28)")."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, OSError):
        return err.errno in codes
    match = re.search(r"os error (\d+)", str(err))
    return bool(match) and int(match.group(1)) in codes


__all__ = ["checkpoint_problem", "crc32_of", "disk_full", "file_records", "honour_umask"]
