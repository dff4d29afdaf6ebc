"""Session fixtures of the pico-analyze tests (the runs themselves: synthetic_runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic_runs import add_scores, make_original_run, make_pico_run


@pytest.fixture(scope="session")
def pico_run(tmp_path_factory) -> Path:
    return make_pico_run(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="session")
def original_run(tmp_path_factory) -> Path:
    return make_original_run(tmp_path_factory.mktemp("orig") / "demo-1")


@pytest.fixture(scope="session")
def scored_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of different width on the same data, with logs, eval and benchmark scores."""
    base = tmp_path_factory.mktemp("scored")
    narrow = add_scores(make_pico_run(base / "narrow", steps=(0, 1, 2, 4, 8, 16, 32)))
    wide = add_scores(make_pico_run(base / "wide", steps=(0, 1, 2, 4, 8, 16, 32), d=48))
    return narrow, wide


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (subprocesses, full runs)")
