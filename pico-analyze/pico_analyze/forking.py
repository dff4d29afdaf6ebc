"""The garbage collector around forked workers and figure drawing.

Used by :mod:`pico_analyze.runner` (analysis workers) and :mod:`pico_analyze.figure_style`
(figure workers). An analysis holds ~10^6 Python objects (torch's modules, the table rows); each
full collection scans them all (~60 ms), and a forked worker that scans them also touches their
pages, copying them on write.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_objects() -> Iterator[None]:
    """Every object that exists when the block starts is out of the collector's reach within it
    (``gc.freeze``), and for good in processes forked inside it: they never scan those objects.
    Undone after the block, unless objects were frozen already (by the caller)."""
    already = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already:
            gc.unfreeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection within the block, then one of the young generations (where all
    that the block made still is): for work that makes many short-lived objects with reference
    cycles (a matplotlib figure: ~10^5 artists), whose collections would rescan every live
    object several times. Leaves the collector as it found it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(1)
