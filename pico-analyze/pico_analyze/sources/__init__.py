"""Where runs come from: our run directory, the original pico-train layout, the Hugging Face Hub.

Reads a path or a repo id and writes nothing: :func:`open_source` returns the
:class:`~pico_analyze.load.Source` that turns the run's files into
:class:`~pico_analyze.load.Checkpoint` views.
"""

from __future__ import annotations

from pathlib import Path

from pico_analyze.load import Source, SourceError
from pico_analyze.sources.hub import HubRun, parse_hub_spec
from pico_analyze.sources.original import OriginalRun
from pico_analyze.sources.pico import PicoRun

__all__ = ["HubRun", "OriginalRun", "PicoRun", "open_source"]


def _looks_local(text: str) -> bool:
    """Whether a spec that names nothing on disk was meant as a local path, not a repo id:
    it starts like a path (``/``, ``.``, ``~``), has more than two parts, or its first part is an
    existing folder (``runs/dmeo`` when ``runs/`` exists)."""
    if text.startswith(("/", ".", "~", "\\")) or text.count("/") != 1:
        return True
    return Path(text.split("/")[0]).expanduser().is_dir()


def open_source(spec: str | Path, revision: str | None = None) -> Source:
    """A run from a local folder (ours or the original layout) or a Hub repo id.

    `spec` is a path; ``hf://owner/name[@revision]``; or a bare ``owner/name`` that is not a
    local path (its first part is no local folder). A path that does not exist is refused at
    once, without asking the Hub.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if text.startswith("hf://"):
        hub = parse_hub_spec(text, revision)
        if hub is None:
            raise SourceError(f"'{text}' is not a Hugging Face repo id (hf://owner/name[@rev]).")
        return HubRun(*hub)
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"'{path}' is a file; give a run directory.")
        if PicoRun.detect(path):
            return PicoRun(path)
        if OriginalRun.detect(path):
            return OriginalRun(path)
        raise SourceError(
            f"'{path}' is neither a pico run directory (checkpoints/step_*/checkpoint.json) nor "
            f"an original pico-train run (training_config.yaml + checkpoints/step_*/"
            f"learning_dynamics)."
        )
    hub = None if _looks_local(text) else parse_hub_spec(text, revision)
    if hub is None:
        raise SourceError(
            f"no such run directory: '{text}' (for a Hugging Face repo, write hf://owner/name)."
        )
    return HubRun(*hub, explicit=False)
