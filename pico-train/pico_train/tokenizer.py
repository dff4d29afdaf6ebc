"""Tokenizer: corpus text -> the run's tokenizer (trained, named, local or from the Hub).

Reads ``config.data.tokenizer`` and, for the trained BPE, the corpus's text
(:func:`pico_train.corpus.open_corpus`). :func:`load_tokenizer` is the one entry point; it
dispatches on ``data.tokenizer``:

- None: a byte-level BPE with ``data.tokenizer_vocab_size`` entries trained on the corpus text
  (:func:`train_bpe_tokenizer`), cached by content under ``$PICO_CACHE/tokenizers`` (default
  ``~/.cache/pico``), so every process and every later run reuses the same file;
- a key of :data:`NAMED_TOKENIZERS`: a named vocabulary built by its own module (imported only
  when asked for);
- an existing path: a ``tokenizer.json`` file or a folder of tokenizer files;
- otherwise a Hugging Face Hub name for ``AutoTokenizer.from_pretrained``.

Every tokenizer it returns has an EOS token (documents are separated by EOS) and no more tokens
than ``model.vocab_size``. Writes the trained BPE's ``tokenizer.json`` into the cache (through
``pico_format.atomic_path``) and, with :func:`save_tokenizer`, the tokenizer files into a
checkpoint folder, where ``AutoTokenizer.from_pretrained`` reads them back.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pico_format import atomic_path, write_json_atomic
from pico_format.layout import TOKENIZER
from pico_train.config import RunConfig
from pico_train.corpus import DataError, cache_root, open_corpus, require_hub, texts_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "EOS_TOKEN",
    "NAMED_TOKENIZERS",
    "batch_encoder",
    "bpe_cache_path",
    "load_tokenizer",
    "open_tokenizer",
    "prepare_tokenizer",
    "save_tokenizer",
    "tokenizer_hash",
    "train_bpe_tokenizer",
    "wrap_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"  # the trained BPE's only special token (id 0)
# Bump when the BPE recipe below changes: it is part of every cached tokenizer's key.
BPE_VERSION = "pico-bpe-v1"
_BPE_MAX_CHARS = 200_000_000  # text a trained BPE sees from a large dataset (its first rows)
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")

# Named vocabularies: data.tokenizer value -> "module:function", a function of no arguments that
# returns the tokenizer. The module is imported only when its name is asked for.
NAMED_TOKENIZERS: dict[str, str] = {"qwen2": "pico_train.qwen2_tokenizer:qwen2_tokenizer"}


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------


def load_tokenizer(config: RunConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer, with an EOS token and no more tokens than the model's vocabulary."""
    name = config.data.tokenizer
    if name is None:
        tokenizer = train_bpe_tokenizer(_bpe_texts(config), config.data.tokenizer_vocab_size)
        label = f"trained BPE (vocab {config.data.tokenizer_vocab_size})"
    else:
        tokenizer = open_tokenizer(name)
        label = f"'{name}'"
    prepare_tokenizer(tokenizer, config, label)
    return tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, config: RunConfig, label: str) -> None:
    """Give `tokenizer` an EOS token if its vocabulary has one; refuse it if it cannot serve."""
    _ensure_eos(tokenizer, label)
    _check_vocab(tokenizer, config, label)


def open_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A named vocabulary, a local tokenizer.json or folder, or a Hub tokenizer name."""
    if name in NAMED_TOKENIZERS:
        module, function = NAMED_TOKENIZERS[name].split(":")
        build: Callable[[], PreTrainedTokenizerBase] = getattr(
            importlib.import_module(module), function
        )
        return build()
    path = Path(name).expanduser()
    if path.is_file():
        return _tokenizer_file(name, path)
    if path.is_dir():
        return _tokenizer_folder(name, path)
    if name.startswith(("/", "./", "../", "~")) or name.endswith(".json"):
        raise DataError(f"data.tokenizer '{name}' does not exist.")
    return _hub_tokenizer(name)


# transformers 4.x knows no "TokenizersBackend" (5.x's name for a plain fast tokenizer) and reads
# "extra_special_tokens" as a dict of named tokens; 5.x also loads the 4.x spelling of both.
_PORTABLE_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike) -> None:
    """Write the tokenizer files (tokenizer.json and its config) into a checkpoint folder, in the
    form transformers 4.x (>= 4.46) and 5.x both load: tokenizer_config.json names the class
    PreTrainedTokenizerFast and lists extra special tokens as additional_special_tokens."""
    tokenizer.save_pretrained(str(folder))
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    cls = config.get("tokenizer_class")
    config["tokenizer_class"] = _PORTABLE_CLASS.get(cls, cls)
    if config.get("backend") == "tokenizers":
        del config["backend"]
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        config["additional_special_tokens"] = extra
    write_json_atomic(path, config)


# ----------------------------------------------------------------------------------------------
# Named, local and Hub tokenizers
# ----------------------------------------------------------------------------------------------


def _tokenizer_file(name: str, path: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    if path.suffix != ".json":
        raise DataError(
            f"data.tokenizer '{name}' is a file but not a tokenizer.json; give a "
            f"tokenizer.json, a folder of tokenizer files, or a Hub tokenizer name."
        )
    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as err:
        raise DataError(f"data.tokenizer '{name}' is not a readable tokenizer.json: {err}") from err


def _tokenizer_folder(name: str, path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if (path / "tokenizer_config.json").is_file() or not (path / TOKENIZER).is_file():
            return AutoTokenizer.from_pretrained(str(path))
        return PreTrainedTokenizerFast(tokenizer_file=str(path / TOKENIZER))
    except Exception as err:
        raise DataError(
            f"data.tokenizer folder '{name}' holds no loadable tokenizer files "
            f"(tokenizer.json or tokenizer_config.json): {type(err).__name__}: {err}"
        ) from err


def _hub_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:  # already in the Hugging Face cache: no network needed
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:
        require_hub(f"data.tokenizer '{name}'")
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise DataError(
            f"Tokenizer '{name}' could not be downloaded from the Hugging Face Hub or found in "
            f"the local cache ({type(err).__name__}: {err}). Check the name and your connection; "
            f"offline, give a local tokenizer.json or tokenizer folder in data.tokenizer, or "
            f"leave data.tokenizer unset to train a BPE on the corpus."
        ) from err


def _ensure_eos(tokenizer: PreTrainedTokenizerBase, label: str) -> None:
    if tokenizer.eos_token_id is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in _EOS_CANDIDATES:
        if candidate in vocab:
            tokenizer.eos_token = candidate
            return
    raise DataError(
        f"Tokenizer {label} has no EOS token (none set, and none of {list(_EOS_CANDIDATES)} in "
        f"its vocabulary); documents are separated by EOS. Use a tokenizer with one."
    )


def _check_vocab(tokenizer: PreTrainedTokenizerBase, config: RunConfig, label: str) -> None:
    n, vocab_size = len(tokenizer), config.model.vocab_size
    if n > vocab_size:
        fix = f"set model.vocab_size >= {n} (e.g. {-(-n // 64) * 64}, a multiple of 64)" + (
            " or a smaller data.tokenizer_vocab_size" if config.data.tokenizer is None else ""
        )
        raise DataError(
            f"Tokenizer {label} has {n} tokens but model.vocab_size is {vocab_size}: {fix}."
        )


# ----------------------------------------------------------------------------------------------
# Byte-level BPE trained on the corpus, cached by content
# ----------------------------------------------------------------------------------------------


def _bpe_texts(config: RunConfig) -> list[str]:
    """What a trained BPE learns from: the embedded plays, or the dataset's first text."""
    corpus = open_corpus(config)
    if corpus.kind == "tokens":
        raise DataError(
            f"Dataset '{corpus.label}' is pre-tokenized (input_ids), so there is no text to "
            f"train a tokenizer on: name the tokenizer it was made with in data.tokenizer."
        )
    texts: list[str] = []
    chars = 0
    for batch in corpus.text_batches():
        texts.extend(batch)
        chars += sum(len(t) for t in batch)
        if chars >= _BPE_MAX_CHARS:
            break
    if not texts:
        raise DataError(f"Dataset '{corpus.label}' has no text to train a tokenizer on.")
    return texts


def wrap_tokenizer(tokenizer_file: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A tokenizer.json made here -> transformers tokenizer with <|endoftext|> as EOS/BOS/pad."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=1_000_000_000,  # documents are packed; no per-text length limit
    )


def bpe_cache_path(
    texts: list[str], vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where train_bpe_tokenizer keeps the tokenizer.json for these inputs."""
    key = hashlib.sha256(f"{BPE_VERSION}|{vocab_size}|{texts_hash(texts)}".encode()).hexdigest()
    return cache_root(cache_dir) / "tokenizers" / key[:32] / TOKENIZER


def train_bpe_tokenizer(
    texts: list[str], vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """Train (or fetch from the cache) a byte-level BPE with ``vocab_size`` entries on ``texts``.

    The cache key is sha256(texts, vocab_size, BPE_VERSION), so the same inputs reuse the same
    ``<cache>/tokenizers/<key>/tokenizer.json`` across processes. Training is deterministic: the
    same texts give the same merges. ``<|endoftext|>`` (id 0) is the only special token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    path = bpe_cache_path(texts, vocab_size, cache_dir)
    if not path.is_file():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        with atomic_path(path) as tmp:  # a concurrent reader never sees half a file
            tokenizer.save(str(tmp))
    return wrap_tokenizer(path)


# ----------------------------------------------------------------------------------------------
# Identity and encoding
# ----------------------------------------------------------------------------------------------


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what decides the ids: vocabulary, merges, added tokens, pre-tokenizer, EOS.

    Equal for a tokenizer and its save_pretrained copy (padding/truncation settings and
    transformers' own files do not count).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        content = {k: spec.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer")}
    else:  # a slow tokenizer: its vocabulary is what we can see
        content = {"vocab": sorted(tokenizer.get_vocab().items())}
    content["eos"] = tokenizer.eos_token_id
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def batch_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list[list[int]]]:
    """texts -> list of id lists, without special tokens, truncation or padding."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())  # a copy: the caller's stays as it is
        backend.no_truncation()
        backend.no_padding()
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # fast: no offsets
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]
