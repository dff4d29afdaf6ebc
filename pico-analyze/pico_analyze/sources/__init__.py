"""Where runs come from: our run directory, the original pico-train layout, the Hugging Face Hub.

Each source turns its files into :class:`pico_analyze.load.Checkpoint` views; see
:func:`pico_analyze.load.open_source` to open one from a path or repo id.
"""

from pico_analyze.sources.hub import HubRun
from pico_analyze.sources.original import OriginalRun
from pico_analyze.sources.pico import PicoRun

__all__ = ["HubRun", "OriginalRun", "PicoRun"]
