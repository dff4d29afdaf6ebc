"""Export: fp16/bf16 safetensors and GGUF load back through transformers with our logits."""

import json

import pytest
import torch

from pico_format import RunPaths, checkpoint_transaction, write_benchmarks
from pico_train.checkpoint import save_model_files
from pico_train.config import ModelConfig
from pico_train.export import ExportError, export_checkpoint
from pico_train.gguf_export import permute_qk
from pico_train.model import PicoDecoder
from pico_train.tokenizer import train_bpe_tokenizer

TEXTS = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
] * 20
SHAPE = ModelConfig(
    d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128, vocab_size=320, max_seq_len=64
)


def _model(c: ModelConfig, seed: int = 0) -> PicoDecoder:
    """Weights large enough that logits are far from uniform (so greedy choices are not ties)."""
    torch.manual_seed(seed)
    model = PicoDecoder(c)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.15 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A run directory with one checkpoint (step 5) of a random model and a trained BPE."""
    root = tmp_path_factory.mktemp("run")
    tokenizer = train_bpe_tokenizer(TEXTS, 300, cache_dir=root / "cache")
    model = _model(SHAPE)
    run = RunPaths(root / "run")
    run.root.mkdir()
    with checkpoint_transaction(run, 5) as tmp:
        save_model_files(tmp.root, model, tokenizer)
    ckpt = run.checkpoint(5)
    ids = torch.tensor([tokenizer("To be, or not to be, that is")["input_ids"]])
    with torch.no_grad():
        logits = model(ids)
    return {"ckpt": ckpt, "model": model, "ids": ids, "logits": logits, "tokenizer": tokenizer}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_fp16_export_loads_in_transformers_with_our_logits(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_checkpoint(checkpoint["ckpt"].root, tmp_path / "out", dtype="fp16")
    out = result.out
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert hf.dtype == torch.float16
    with torch.no_grad():
        logits = hf.float()(checkpoint["ids"]).logits
    assert _relative(logits, checkpoint["logits"]) < 1e-2
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("To be, or not to be, that is")["input_ids"] == checkpoint["ids"][0].tolist()
    assert (out / "README.md").is_file() and "model.safetensors" in result.files


def test_sharded_export_writes_an_index_transformers_follows(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    export_checkpoint(checkpoint["ckpt"].root, out, dtype="fp32", max_shard_size=60_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(checkpoint["model"].state_dict())
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(hf(checkpoint["ids"]).logits, checkpoint["logits"], atol=1e-5)


def _rounded_like_gguf(model: PicoDecoder, gguf_type: str) -> PicoDecoder:
    """Our model with its 2-D weights rounded as the GGUF stores them (an independent path:
    gguf's quantize/dequantize, or a cast to fp16), norms left in fp32."""
    import gguf

    copy = PicoDecoder(model.config).eval()
    state = {}
    for k, v in model.state_dict().items():
        if v.ndim == 2 and gguf_type == "q8_0":
            q8 = gguf.GGMLQuantizationType.Q8_0
            v = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(v.numpy(), q8), q8))
        elif v.ndim == 2:
            v = v.half().float()
        state[k] = v
    copy.load_state_dict(state)
    return copy


@pytest.mark.parametrize("gguf_type, tolerance", [("f16", 1e-2), ("q8_0", 6e-2)])
def test_gguf_loads_in_transformers_with_our_logits(checkpoint, tmp_path, gguf_type, tolerance):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_checkpoint(checkpoint["ckpt"].root, tmp_path / "g", gguf=gguf_type)
    name = result.gguf.name
    hf = AutoModelForCausalLM.from_pretrained(str(result.out), gguf_file=name).eval()
    ids = checkpoint["ids"]
    with torch.no_grad():
        logits = hf(ids).logits
    # Against our float model: the rounding error of the format (q8_0 measured ~3e-2 on these
    # deliberately large random weights; BENCHMARKS.md has the trained model's).
    error = _relative(logits, checkpoint["logits"])
    assert error < tolerance, f"{gguf_type}: relative logit error {error:.2e}"
    # Against our model with the same rounding: the file holds exactly those weights, in the
    # right layout (a wrong Q/K permutation or tensor name would be far off).
    rounded = _rounded_like_gguf(checkpoint["model"], gguf_type)
    with torch.no_grad():
        assert _relative(logits, rounded(ids)) < 1e-4
    # Greedy continuation: the GGUF model picks the same 8 tokens as ours.
    ours = rounded.generate(ids, 8, temperature=0.0)
    theirs = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert theirs[0].tolist() == ours[0].tolist()
    tok = AutoTokenizer.from_pretrained(str(result.out), gguf_file=name)
    assert tok("To be, or not to be, that is")["input_ids"] == ids[0].tolist()


def test_qk_permutation_matches_llama_cpp_layout():
    """Row (head h, half s, index i) moves to head h, row 2i + s (independent index loop)."""
    n_heads, head_dim, d_in = 3, 8, 5
    w = torch.randn(n_heads * head_dim, d_in)
    p = permute_qk(w, n_heads)
    for h in range(n_heads):
        for s in range(2):
            for i in range(head_dim // 2):
                src = h * head_dim + s * head_dim // 2 + i
                assert torch.equal(p[h * head_dim + 2 * i + s], w[src])


def test_model_card_is_filled_from_the_checkpoint(checkpoint, tmp_path):
    ckpt = checkpoint["ckpt"]
    write_benchmarks(
        ckpt,
        {
            "step": 5,
            "harness": "lm-eval",
            "harness_version": "0.4.13",
            "limit": 10,
            "tasks": {"arc_easy": {"version": 1.0, "n_shot": 0, "metrics": {"acc": 0.25}}},
        },
    )
    try:
        result = export_checkpoint(ckpt.root, tmp_path / "card", gguf="f16")
    finally:
        ckpt.benchmarks.unlink()
    card = (result.out / "README.md").read_text()
    total = sum(p.numel() for p in checkpoint["model"].parameters())
    for text in (
        "(step 5)",
        f"| parameters | {total:,} ",
        "| layers | 2 |",
        "| attention heads | 4 (key/value heads 2, head dim 16) |",
        "| arc_easy | 0 | acc | 0.2500 |",
        "at most 10 examples per task",
        "AutoModelForCausalLM.from_pretrained",
        f'gguf_file="{result.gguf.name}"',
    ):
        assert text in card, text


def test_errors_are_one_line_and_leave_nothing_behind(checkpoint, tmp_path):
    source = checkpoint["ckpt"].root
    cases = [
        ({"dtype": "fp8"}, "unknown dtype 'fp8'"),
        ({"gguf": "q4_k"}, "unknown GGUF type 'q4_k'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ExportError, match=message):
            export_checkpoint(source, tmp_path / "x", **kwargs)
    with pytest.raises(ExportError, match="no checkpoint at step 7 .*steps 5"):
        export_checkpoint(source.parent.parent, tmp_path / "x", step=7)
    assert not (tmp_path / "x").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; .*--force"):
        export_checkpoint(source, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    export_checkpoint(source, taken, force=True)
    assert not (taken / "keep.txt").exists() and (taken / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_gguf_refuses_a_shape_llama_cpp_cannot_represent(tmp_path):
    tokenizer = train_bpe_tokenizer(TEXTS, 300, cache_dir=tmp_path / "cache")
    odd = ModelConfig(
        d_model=48, n_layers=1, n_heads=4, n_kv_heads=2, mlp_hidden=96, vocab_size=320
    )  # rows of 48 values: not whole blocks of 32
    save_model_files(tmp_path / "ckpt", _model(odd), tokenizer)
    with pytest.raises(ExportError, match="q8_0 .*d_model=48 is not a multiple of 32"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out", gguf="q8_0")
    assert not (tmp_path / "out").exists()
    export_checkpoint(tmp_path / "ckpt", tmp_path / "out", gguf="f16")  # f16 represents it


def test_find_checkpoints_by_folder_run_and_steps(checkpoint, tmp_path):
    from pico_format import RunFormatError
    from pico_train.checkpoint import find_checkpoints

    ckpt = checkpoint["ckpt"]
    run_root = ckpt.root.parent.parent
    assert find_checkpoints(ckpt.root) == [ckpt]
    assert find_checkpoints(run_root) == [ckpt]  # the latest
    assert find_checkpoints(ckpt.root, [5]) == find_checkpoints(run_root, "all") == [ckpt]
    plain = tmp_path / "model"
    save_model_files(plain, checkpoint["model"])
    with pytest.raises(RunFormatError, match="single model folder"):
        find_checkpoints(plain, [5])
    with pytest.raises(RunFormatError, match="neither a checkpoint folder nor a run"):
        find_checkpoints(tmp_path)
