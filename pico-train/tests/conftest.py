"""Fixtures shared by the pico-train tests: an isolated cache and the session's tokenizer."""

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


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    # The folder _isolated_cache points PICO_CACHE at, so load_tokenizer finds this session's BPE.
    return os.environ.get("PICO_CACHE") or str(tmp_path_factory.getbasetemp() / "pico-cache")


@pytest.fixture(scope="session")
def tok(cache_dir):
    """The Shakespeare BPE of the tiny configs (vocab 300), trained once per session."""
    from pico_train.corpus import shakespeare_texts
    from pico_train.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(shakespeare_texts(), 300, cache_dir)


@pytest.fixture(scope="session")
def tok_dir(tok, tmp_path_factory):
    """The session's BPE saved as a tokenizer folder (save_pretrained)."""
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return path
