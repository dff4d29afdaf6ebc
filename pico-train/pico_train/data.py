"""Data: corpus -> tokenizer -> packed sequences in one global order.

Reads a corpus (``corpus.open_corpus``: the embedded Shakespeare plays when ``data.dataset`` is
None, local parquet/json/jsonl/arrow files, or a Hugging Face dataset) and the run's tokenizer
(``tokenizer.load_tokenizer``).

Writes a :class:`TokenData`: windows of ``seq_len + 1`` token ids (inputs plus shifted targets).
Raw text is tokenized, each document followed by EOS, concatenated and cut into non-overlapping
windows (the incomplete tail is dropped); pre-tokenized rows (an ``input_ids`` column) are
concatenated in order and cut the same way, so rows of exactly ``seq_len + 1`` ids stay whole.

- Map mode (embedded corpus, local files): every window in memory. ``eval_sequences`` windows,
  chosen by a generator seeded with ``data.seed``, are held out; epoch ``e`` of the training order
  is a permutation of the remaining windows seeded with ``(seed, e)``. Global sequence ``i`` is
  position ``i % n_train`` of epoch ``i // n_train``, so any batch is computed directly.
- Stream mode (Hub datasets): the stream is read once, in order. The held-out set is the first
  ``eval_sequences`` windows of the stream; training sequence ``i`` is the window after them with
  index ``i``. Every rank reads the whole stream and keeps its share, so the order never depends on
  the number of processes; a first call at a later step reads forward to it (resume).

Batch ``k`` holds global sequences ``[k*B, (k+1)*B)`` whatever the model size, device count or
micro-batch split. Map-mode tokenization of text is cached under ``$PICO_CACHE/tokens`` (default
``~/.cache/pico``), keyed by the corpus content and the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pico_format import atomic_path
from pico_train.config import RunConfig
from pico_train.corpus import Corpus, DataError, cache_root, open_corpus
from pico_train.tokenizer import batch_encoder, load_tokenizer, prepare_tokenizer, tokenizer_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["DataError", "TokenData", "build_data"]

# Bump when the packing, held-out choice or order below changes: it is part of the fingerprint.
DATA_VERSION = "pico-data-v1"


# ----------------------------------------------------------------------------------------------
# Text -> token ids
# ----------------------------------------------------------------------------------------------


def _tokenize(encode, texts: list[str], eos_id: int) -> np.ndarray:
    """Documents -> one int32 array, each document followed by EOS."""
    ids = encode(texts)
    out = np.empty(sum(len(x) for x in ids) + len(ids), dtype=np.int32)
    at = 0
    for doc in ids:
        out[at : at + len(doc)] = doc
        at += len(doc)
        out[at] = eos_id
        at += 1
    return out


# ----------------------------------------------------------------------------------------------
# Map mode: every window in memory, seeded held-out set and epoch permutations
# ----------------------------------------------------------------------------------------------


def _generator(seed: int, *stream: int) -> np.random.Generator:
    # SeedSequence((seed, purpose, epoch)) gives independent, platform-stable streams.
    entropy = [seed % 2**64, *stream]  # SeedSequence takes non-negative integers only
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


class _MapWindows:
    def __init__(self, ids: np.ndarray, width: int, seed: int, n_eval: int, label: str):
        n = len(ids) // width
        if n < 2:
            raise DataError(
                f"'{label}' holds {len(ids)} tokens, too few for even two sequences of {width} "
                f"tokens (one held out, one to train on): use more data, or lower data.seq_len "
                f"(below {max(1, len(ids) // 2 - 1)})."
            )
        if n <= n_eval:
            raise DataError(
                f"'{label}' gives {n} sequences of {width} tokens ({len(ids)} tokens), but "
                f"data.eval_sequences={n_eval} are held out and training needs at least one "
                f"more: lower data.eval_sequences (below {n}) or data.seq_len, or use more data."
            )
        self.windows = torch.from_numpy(np.ascontiguousarray(ids[: n * width]).reshape(n, width))
        self.seed = seed
        held_out = np.sort(_generator(seed, 0).permutation(n)[:n_eval])
        keep = np.ones(n, dtype=bool)
        keep[held_out] = False
        self.eval_index = held_out
        self.train_index = np.flatnonzero(keep)  # the training pool, in corpus order
        self._epochs: dict[int, np.ndarray] = {}

    @property
    def n_train(self) -> int:
        return len(self.train_index)

    def _epoch(self, e: int) -> np.ndarray:
        """Window indices of epoch e, in training order (kept for the last two epochs)."""
        if e not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[e] = self.train_index[
                _generator(self.seed, 1, e).permutation(self.n_train)
            ]
        return self._epochs[e]

    def window_index(self, start: int, count: int) -> np.ndarray:
        """Corpus window indices of global training sequences [start, start + count)."""
        glob = np.arange(start, start + count, dtype=np.int64)
        epochs, pos = np.divmod(glob, self.n_train)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._epoch(int(e))[pos[sel]]
        return out

    def read(self, start: int, count: int) -> torch.Tensor:
        return self.windows[torch.from_numpy(self.window_index(start, count))].long()

    def eval(self) -> torch.Tensor:
        return self.windows[torch.from_numpy(self.eval_index)].long()


# ----------------------------------------------------------------------------------------------
# Stream mode: one sequential pass, held-out first, resumable by reading forward
# ----------------------------------------------------------------------------------------------


class _StreamWindows:
    def __init__(self, blocks: Iterator[np.ndarray], width: int, n_eval: int, label: str):
        self._blocks = blocks  # (k, seq_len+1) int32 arrays of consecutive windows
        self._label = label
        self._next = 0  # stream index of the first window not yet pulled from _blocks
        self._width = width
        self._kept = np.empty((0, width), dtype=np.int32)  # windows [_kept_start, _next)
        self._kept_start = 0
        self._eval = torch.from_numpy(self._take(0, n_eval, "held-out")).long()
        self.n_eval = n_eval

    def _take(self, start: int, count: int, what: str) -> np.ndarray:
        """Stream windows [start, start + count); earlier windows are dropped for good."""
        if start < self._kept_start:
            raise DataError(
                f"Stream mode reads '{self._label}' forward only: sequence {start} was requested "
                f"after sequence {self._kept_start}. Call train_batch with non-decreasing steps."
            )
        end = start + count
        parts = [self._kept[start - self._kept_start :]] if self._next > start else []
        while self._next < end:
            block = next(self._blocks, None)
            if block is None:
                raise DataError(
                    f"Dataset '{self._label}' ran out after {self._next} sequences of "
                    f"{self._width} tokens, but {what} "
                    f"sequence {end - 1} was requested: train fewer steps, lower "
                    f"data.eval_sequences or data.seq_len, or use more data."
                )
            first, self._next = self._next, self._next + len(block)
            if self._next > start:  # windows before `start` are skipped: a fast-forward
                parts.append(block[max(0, start - first) :])
        self._kept = np.concatenate(parts) if len(parts) != 1 else parts[0]
        self._kept_start = start
        return self._kept[:count]

    def read(self, start: int, count: int) -> torch.Tensor:
        return torch.from_numpy(self._take(self.n_eval + start, count, "training")).long()

    def eval(self) -> torch.Tensor:
        return self._eval


def _pack(chunks: Iterator[tuple[np.ndarray, int]], width: int) -> Iterator[np.ndarray]:
    """Consecutive (token ids, documents) chunks -> blocks of whole windows (tail dropped)."""
    rest = np.empty(0, dtype=np.int32)
    for chunk, _ in chunks:
        rest = np.concatenate([rest, chunk]) if rest.size else chunk
        n = len(rest) // width
        if n:
            yield rest[: n * width].reshape(n, width)
            rest = rest[n * width :].copy()


# ----------------------------------------------------------------------------------------------
# TokenData
# ----------------------------------------------------------------------------------------------


class TokenData:
    """Token windows in one global order: ``train_batch(step)`` and the fixed ``eval_batch()``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        fingerprint: str,
        seq_len: int,
        windows: _MapWindows | _StreamWindows,
        info: dict[str, Any],
    ):
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.seq_len = seq_len
        self._windows = windows
        self._info = info

    @property
    def mode(self) -> str:
        return "map" if isinstance(self._windows, _MapWindows) else "stream"

    def train_batch(
        self, step: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> torch.LongTensor:
        """This rank's rows of global batch ``step``: (batch_size // world_size, seq_len+1) int64.

        Global batch ``step`` is training sequences [step*batch_size, (step+1)*batch_size);
        rank r gets rows [r*b, (r+1)*b) of it, b = batch_size // world_size. Map mode: any step
        in any order. Stream mode: non-decreasing steps (a first call at step k reads forward).
        """
        if step < 0 or batch_size <= 0:
            raise ValueError(
                f"train_batch: need step >= 0 and batch_size > 0, got {step}, {batch_size}."
            )
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"train_batch: rank {rank} is not in [0, world_size={world_size}).")
        if batch_size % world_size:
            raise DataError(
                f"The global batch of {batch_size} sequences does not split over {world_size} "
                f"processes: make training.global_batch_size a multiple of the process count."
            )
        b = batch_size // world_size
        return self._windows.read(step * batch_size + rank * b, b)

    def eval_batch(self) -> torch.LongTensor:
        """The held-out sequences: (data.eval_sequences, seq_len+1) int64, never trained on."""
        return self._windows.eval().clone()

    def describe(self) -> dict[str, Any]:
        """A small JSON-able summary (counts are None where a stream does not know them)."""
        return {
            **self._info,
            "mode": self.mode,
            "seq_len": self.seq_len,
            "fingerprint": self.fingerprint,
        }


def build_data(config: RunConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> TokenData:
    """config -> TokenData (tokenizer None: load_tokenizer(config))."""
    if tokenizer is None:
        tokenizer = load_tokenizer(config)
    else:
        prepare_tokenizer(tokenizer, config, "given to build_data")
    data, width = config.data, config.seq_len + 1
    corpus = open_corpus(config)
    tok_hash = tokenizer_hash(tokenizer)
    identity = corpus.identity()
    info: dict[str, Any] = {
        "source": corpus.label,
        "kind": corpus.kind,
        "n_documents": None,
        "n_tokens": None,
        "n_train_sequences": None,
        "n_eval_sequences": data.eval_sequences,
        "tokenizer": getattr(tokenizer, "name_or_path", None) or data.tokenizer or "trained BPE",
    }
    if corpus.streaming:
        windows: _MapWindows | _StreamWindows = _StreamWindows(
            _pack(_token_chunks(corpus, tokenizer, config), width),
            width,
            data.eval_sequences,
            corpus.label,
        )
    else:
        ids, n_docs = _cached_tokens(
            _digest({"v": DATA_VERSION, "corpus": identity, "tokenizer": tok_hash}),
            lambda: _concat(_token_chunks(corpus, tokenizer, config)),
            # Only text is worth caching, and only content-addressed (not Hub) sources.
            cacheable=corpus.kind == "text" and corpus.source != "hub",
        )
        windows = _MapWindows(ids, width, data.seed, data.eval_sequences, corpus.label)
        info.update(n_documents=n_docs, n_tokens=len(ids), n_train_sequences=windows.n_train)

    fingerprint = _digest(
        {
            "version": DATA_VERSION,
            "tokenizer": tok_hash,
            "corpus": identity,
            "kind": corpus.kind,
            "mode": "stream" if corpus.streaming else "map",
            "seq_len": config.seq_len,
            "seed": data.seed,
            "eval_sequences": data.eval_sequences,
        }
    )
    return TokenData(tokenizer, fingerprint, config.seq_len, windows, info)


def _token_chunks(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, config: RunConfig
) -> Iterator[tuple[np.ndarray, int]]:
    """(int32 token ids, documents) per batch of the corpus, in order.

    Text: each document tokenized and followed by EOS. Pre-tokenized: the rows' ids as they are.
    """
    if corpus.kind == "tokens":
        yield from corpus.id_batches(config.model.vocab_size)
        return
    encode, eos = batch_encoder(tokenizer), int(tokenizer.eos_token_id)
    for texts in corpus.text_batches():
        if texts:
            yield _tokenize(encode, texts, eos), len(texts)


# ----------------------------------------------------------------------------------------------
# Hashing and the token cache
# ----------------------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def _concat(chunks: Iterator[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    parts, n_docs = [], 0
    for ids, docs in chunks:
        parts.append(ids)
        n_docs += docs
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)), n_docs


def _cached_tokens(key: str, compute, cacheable: bool) -> tuple[np.ndarray, int]:
    """Tokenized corpus from $PICO_CACHE/tokens/<key>.npz, computing and storing it if absent."""
    if not cacheable:
        return compute()
    path = cache_root() / "tokens" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["ids"], int(z["n_documents"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed and replaced
    ids, n_docs = compute()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, n_documents=np.int64(n_docs))
    return ids, n_docs
