"""Checkpoint tokenizer files load in transformers 4.x (>= 4.46, the oldest we allow) and 5.x.

transformers 5 saves a plain fast tokenizer as "TokenizersBackend" with its extra special tokens
as a list; transformers 4 knows neither (ValueError: Tokenizer class TokenizersBackend does not
exist). The CI test checks the files against what 4.x reads; the second one loads a real
checkpoint and export with transformers 4.46 when PICO_TRANSFORMERS4_PYTHON names a Python that
has it (README: "Testing with transformers 4.x").
"""

import json
import os
import subprocess
import textwrap

import pytest
import torch

from pico_train.checkpoint import save_model_files
from pico_train.config import ModelConfig
from pico_train.export import export_checkpoint
from pico_train.model import PicoDecoder
from pico_train.qwen2_tokenizer import qwen2_tokenizer

# Tokenizer classes transformers 4.46 resolves from tokenizer_config.json without a model type.
TRANSFORMERS4_FAST_CLASSES = {"PreTrainedTokenizerFast", "GPT2TokenizerFast", "Qwen2TokenizerFast"}
SAMPLE = "Hello 你好 Привет\r\n\tcode 12345 🎉<|im_start|>"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen") / "step_00000002"
    c = ModelConfig(
        d_model=32,
        n_layers=1,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=64,
        vocab_size=151936,
        max_seq_len=32,
    )
    torch.manual_seed(0)
    save_model_files(folder, PicoDecoder(c), qwen2_tokenizer())
    return folder


def test_tokenizer_config_is_what_transformers4_reads(checkpoint):
    from transformers import AutoTokenizer

    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in TRANSFORMERS4_FAST_CLASSES
    assert "backend" not in config
    # 4.x reads extra_special_tokens as a dict of named tokens; a list must not be there.
    assert not isinstance(config.get("extra_special_tokens"), list)
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert config["eos_token"] == config["pad_token"] == "<|endoftext|>"
    loaded = AutoTokenizer.from_pretrained(str(checkpoint))
    ours = qwen2_tokenizer()
    assert loaded(SAMPLE)["input_ids"] == ours(SAMPLE)["input_ids"]
    assert loaded.convert_tokens_to_ids("<|im_end|>") == 151645


SCRIPT = textwrap.dedent("""
    import json, sys, torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = {"version": transformers.__version__}
    for folder in sys.argv[2:]:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
        ids = tok(sys.argv[1])["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits
        row = logits[0, -1, :8].tolist()
        out[folder] = {"ids": ids, "class": type(tok).__name__, "logits": row}
    print(json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("PICO_TRANSFORMERS4_PYTHON"),
    reason="set PICO_TRANSFORMERS4_PYTHON to a Python with transformers 4.x",
)
def test_transformers4_loads_checkpoint_and_export(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_checkpoint(checkpoint, tmp_path / "export", dtype="fp32").out
    python = os.environ["PICO_TRANSFORMERS4_PYTHON"]
    proc = subprocess.run(
        [python, "-c", SCRIPT, SAMPLE, str(checkpoint), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"].startswith("4.")
    ids = qwen2_tokenizer()(SAMPLE)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, -1, :8]
    for folder in (checkpoint, out):
        entry = result[str(folder)]
        assert entry["class"] == "PreTrainedTokenizerFast" and entry["ids"] == ids
        assert torch.allclose(torch.tensor(entry["logits"]), expected, atol=1e-5)
