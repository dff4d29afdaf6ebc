"""A run stored in a Hugging Face Hub repository, in our layout or the original one.

Reads the repository's file list (``huggingface_hub.list_repo_files``), fetches the small
metadata files, then, once the analysis knows which steps, splits and kinds it needs, fetches
exactly those files with ``huggingface_hub.snapshot_download(allow_patterns=[...])`` into the
Hugging Face cache. Reading is then delegated to the local source of the detected layout on the
snapshot folder. Writes only into the Hugging Face cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub

from pico_analyze.load import Checkpoint, LoadRequest, ModelShape, Source, SourceError
from pico_analyze.sources.original import OriginalRun
from pico_analyze.sources.pico import PicoRun
from pico_format.hub import hub_unreachable

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def parse_hub_spec(text: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """(repo_id, revision) from ``hf://owner/name[@rev]`` or ``owner/name[@rev]``; else None."""
    body = text.removeprefix("hf://")
    if "@" in body:
        body, _, rev = body.partition("@")
        revision = revision or rev
    return (body, revision) if _REPO_ID.match(body) else None


def check_reachable(what: str) -> None:
    """Fail at once, in one line, when the Hub cannot be reached (huggingface_hub would retry
    for half a minute first). Skipped in offline mode (``HF_HUB_OFFLINE=1``), where
    huggingface_hub itself refuses network calls at once."""
    failed = hub_unreachable()
    if failed:
        host, err = failed
        raise SourceError(
            f"Cannot reach the Hugging Face Hub ({host}) for {what}: {err}. Analyse a local run "
            f"directory, or set HF_HUB_OFFLINE=1 to use files already in the Hugging Face cache."
        )


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class HubRun(Source):
    """A Hub repository holding one run (a branch per run, as the original pico-train did)."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        *,
        explicit: bool = True,
    ):
        self.repo_id, self.revision, self.cache_dir = repo_id, revision, cache_dir
        # A bare owner/name (no hf://) may be a mistyped local path: errors say both.
        self.explicit = explicit
        self.name = repo_id.split("/")[-1] + (f"@{revision}" if revision else "")
        self.files: set[str] | None = None
        self.root: Path | None = None
        self._inner: PicoRun | OriginalRun | None = None

    # -- Hub calls -----------------------------------------------------------------------------

    def _download(self, patterns: list[str]) -> Path:
        """Fetch the files named by `patterns` (exact paths) into one snapshot folder."""
        try:
            root = huggingface_hub.snapshot_download(
                self.repo_id,
                revision=self.revision,
                allow_patterns=sorted(set(patterns)),
                cache_dir=self.cache_dir,
            )
        except Exception as err:  # network, auth, missing revision: all end the analysis
            raise SourceError(
                f"Cannot download from Hugging Face repo '{self.repo_id}'"
                f"{f' @ {self.revision}' if self.revision else ''}: {_first_line(err)}"
            ) from None
        root = Path(root)
        if _COMMIT.match(root.name):
            self.revision = root.name  # pin the commit so later downloads see the same files
        return root

    def _open(self) -> PicoRun | OriginalRun:
        if self._inner is not None:
            return self._inner
        where = f"'{self.repo_id}'" + (f" @ {self.revision}" if self.revision else "")
        check_reachable(
            f"repo {where}"
            if self.explicit
            else f"repo {where} (and no local run directory '{self.repo_id}' exists)"
        )
        try:
            self.files = set(huggingface_hub.list_repo_files(self.repo_id, revision=self.revision))
        except Exception as err:
            raise SourceError(
                f"Cannot list Hugging Face repo {where} (and no local directory "
                f"'{self.repo_id}' exists): {_first_line(err)}"
            ) from None
        if PicoRun.detect_files(self.files):
            self.root = self._download(PicoRun.metadata_files(self.files))
            self._inner = PicoRun(self.root, name=self.name)
        elif OriginalRun.detect_files(self.files):
            self.root = self._download(OriginalRun.metadata_files(self.files))
            self._inner = OriginalRun(self.root, name=self.name, files=self.files)
        else:
            raise SourceError(
                f"Hugging Face repo '{self.repo_id}' holds no pico run "
                f"(neither checkpoints/step_*/checkpoint.json nor "
                f"training_config.yaml)."
            )
        return self._inner

    # -- Source --------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return self._open().steps()

    def shape(self) -> ModelShape:
        return self._open().shape()

    def splits(self, step: int) -> list[str]:
        return self._open().splits(step)

    def captured_suffixes(self) -> list[str] | None:
        return self._open().captured_suffixes()

    def prepare(self, steps: list[int], request: LoadRequest) -> None:
        inner = self._open()
        wanted = {f for step in steps for f in inner.files_needed(step, request)}
        wanted &= self.files or set()
        wanted = {f for f in wanted if not (Path(self.root) / f).is_file()}  # fetched already
        if wanted:
            self._download(sorted(wanted))

    def load(self, step: int, request: LoadRequest, device: str = "cpu") -> Checkpoint:
        return self._open().load(step, request, device)
