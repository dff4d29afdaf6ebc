"""tokenizer.py: the cached BPE, named/local/Hub tokenizers, and the checks every one passes."""

from __future__ import annotations

import time

import pytest

from pico_train.corpus import shakespeare_texts
from pico_train.data import DataError, build_data
from pico_train.tokenizer import (
    NAMED_TOKENIZERS,
    bpe_cache_path,
    load_tokenizer,
    tokenizer_hash,
    train_bpe_tokenizer,
    wrap_tokenizer,
)

from tiny_runs import data_config as cfg

# The xdist worker of the data tests, so the session's BPE is trained once.
pytestmark = pytest.mark.xdist_group("data")


def test_bpe_is_deterministic_cached_and_reloads(tok, tok_dir, cache_dir, tmp_path):
    from transformers import AutoTokenizer

    few = shakespeare_texts()[:3]
    a = train_bpe_tokenizer(few, 280, tmp_path / "a")
    b = train_bpe_tokenizer(few, 280, tmp_path / "b")
    file_a, file_b = (
        bpe_cache_path(few, 280, tmp_path / "a"),
        bpe_cache_path(few, 280, tmp_path / "b"),
    )
    assert file_a.read_bytes() == file_b.read_bytes() and len(a) == len(b) == 280

    cached = bpe_cache_path(shakespeare_texts(), 300, cache_dir)
    mtime = cached.stat().st_mtime_ns
    began = time.perf_counter()
    again = train_bpe_tokenizer(shakespeare_texts(), 300, cache_dir)
    assert time.perf_counter() - began < 1.0  # a cache hit; training takes seconds
    assert cached.stat().st_mtime_ns == mtime and len(list(cached.parent.iterdir())) == 1
    assert tokenizer_hash(again) == tokenizer_hash(tok)

    reloaded = AutoTokenizer.from_pretrained(tok_dir)
    text = "BERNARDO:\nWho's there?\n<|endoftext|>Long live the king!"
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert reloaded.eos_token == tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tokenizer_hash(reloaded) == tokenizer_hash(tok) and len(reloaded) == 300


def test_load_tokenizer_trained_file_and_folder(tok, tok_dir, cache_dir):
    trained = load_tokenizer(cfg())  # the session's cached BPE
    from_folder = load_tokenizer(cfg(f"data.tokenizer={tok_dir}"))
    # A bare tokenizer.json names no EOS: <|endoftext|> is found and set.
    bare = bpe_cache_path(shakespeare_texts(), 300, cache_dir)
    from_file = load_tokenizer(cfg(f"data.tokenizer={bare}"))
    for t in (trained, from_folder, from_file):
        assert t.eos_token_id == 0 and tokenizer_hash(t) == tokenizer_hash(tok)
    # The tokenizer counts by content: the run's saved copy gives the same data fingerprint.
    assert build_data(cfg(), trained).fingerprint == build_data(cfg(), from_folder).fingerprint


def test_tokenizer_larger_than_model_vocab(tok, tok_dir):
    config = cfg(f"data.tokenizer={tok_dir}", "model.vocab_size=256")
    with pytest.raises(DataError, match="300.*256|256.*300") as err:
        load_tokenizer(config)
    assert "model.vocab_size" in str(err.value)
    with pytest.raises(DataError, match="300.*256|256.*300"):
        build_data(config, tok)


def make_named(path):
    return lambda: wrap_tokenizer(path)


def test_named_tokenizer_is_dispatched_to_its_module(tok, cache_dir, monkeypatch):
    import types

    module = types.ModuleType("pico_named_tokenizer_for_test")
    module.build = make_named(bpe_cache_path(shakespeare_texts(), 300, cache_dir))
    monkeypatch.setitem(__import__("sys").modules, module.__name__, module)
    monkeypatch.setitem(NAMED_TOKENIZERS, "shakespeare300", f"{module.__name__}:build")
    named = load_tokenizer(cfg("data.tokenizer=shakespeare300"))
    assert tokenizer_hash(named) == tokenizer_hash(tok)
    # The same checks as every tokenizer: the model's vocabulary must hold it.
    with pytest.raises(DataError, match="'shakespeare300' has 300 tokens"):
        load_tokenizer(cfg("data.tokenizer=shakespeare300", "model.vocab_size=256"))
