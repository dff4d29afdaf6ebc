"""Session fixtures of the pico-analyze tests (the runs themselves: synthetic_runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic_runs import make_original_run, make_pico_run


@pytest.fixture(scope="session")
def pico_run(tmp_path_factory) -> Path:
    return make_pico_run(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="session")
def original_run(tmp_path_factory) -> Path:
    return make_original_run(tmp_path_factory.mktemp("orig") / "demo-1")
