import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep trained tokenizers in one cache per test session, never in the user's home."""
    if "PICO_CACHE" not in os.environ:
        monkeypatch.setenv("PICO_CACHE", str(tmp_path_factory.getbasetemp() / "pico-cache"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (subprocesses, full runs)")
