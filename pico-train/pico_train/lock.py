"""One trainer per run directory: an OS lock on RUN/.lock, held for the whole run.

Reads nothing but the lock file; writes RUN/.lock (the holder's pid and host, for the message a
second trainer prints). The lock is `fcntl.flock`, so the operating system drops it when the
holder exits or dies: a lock file left by a crash is stale by construction and the next trainer
simply takes it. A second trainer is refused at once, before it reads or writes anything else.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from pico_format import RunPaths


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive, non-blocking lock on a run directory (created if missing).

    On release the lock file is removed, and so is the run directory when this lock created it
    and nothing else was written into it (a run refused before it began leaves no trace).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = RunPaths(self.root).lock
        self._fd: int | None = None
        self._created_root = False

    def acquire(self) -> RunLock:
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"run_dir '{self.root}' is a file, not a folder.")
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self._created_root = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunLockedError(
                    f"run directory '{self.root}' is in use by another trainer ({holder}); wait "
                    f"for it to finish or choose another run_dir."
                ) from None
            # The holder we waited on may have removed the file while we opened it: only a
            # lock on the file that is at the path now counts.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: no one else can hold it yet
        os.close(self._fd)
        self._fd = None
        if self._created_root:
            try:
                self.root.rmdir()  # only succeeds when nothing was written
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["RunLock", "RunLockedError"]
