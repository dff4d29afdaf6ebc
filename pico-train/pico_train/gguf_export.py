"""GGUF export: a checkpoint's weights and tokenizer -> one llama.cpp GGUF file.

Reads the float weights (our names = transformers' Llama names), the model shape and the
transformers tokenizer; writes a GGUF file with the ``gguf`` package (the writer llama.cpp's own
converters use):

- architecture ``llama``; hyperparameters under ``llama.*`` (context, width, blocks, SwiGLU width,
  heads, KV heads, rotary dimension and base, RMSNorm epsilon);
- tensors renamed with gguf's Llama name map (``model.layers.3.self_attn.q_proj.weight`` ->
  ``blk.3.attn_q.weight``). Q and K rows are permuted from transformers' rotary layout (the two
  halves of each head rotate together, ``rotate_half``) to llama.cpp's (adjacent pairs rotate
  together), exactly the inverse of what transformers' GGUF loader undoes on reading;
- 2-D weights in F16 or Q8_0 (blocks of 32 values with one fp16 scale), 1-D norm weights in F32,
  as llama.cpp does;
- the tokenizer embedded as a byte-level BPE (``tokenizer.ggml.model = gpt2``): tokens in id
  order, their types (normal, control for special tokens, unused for the padding rows of a
  vocabulary larger than the tokenizer), merges, the pre-tokenizer name llama.cpp knows the split
  regex by (``qwen2`` for the Qwen2 tokenizer, ``gpt-2`` for pico's trained BPE), and the EOS/pad
  ids.

Refuses, before writing anything, what llama.cpp cannot represent: heads that do not divide into
KV groups, an odd head dimension (rotary pairs), a Q8_0 row length that is not a multiple of 32, a
tokenizer that is not byte-level BPE or whose pre-tokenizer llama.cpp does not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pico_train.config import ModelConfig
from pico_train.qwen2_tokenizer import QWEN2_PATTERN

__all__ = ["GGUF_TYPES", "GGUFExportError", "check_gguf_exportable", "write_gguf", "permute_qk"]

GGUF_TYPES = ("f16", "q8_0")
_Q8_BLOCK = 32


class GGUFExportError(ValueError):
    """A model or tokenizer that GGUF (llama.cpp) cannot represent."""


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' rotary row order -> llama.cpp's, for a (n_heads * head_dim, d_in) weight.

    Per head, transformers rotates row i with row i + head_dim/2; llama.cpp rotates rows 2i and
    2i+1. Row j = (half h, index i) of a head moves to 2i + h.
    """
    rows, d_in = w.shape
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, d_in).transpose(1, 2).reshape(rows, d_in)


def _pre_tokenizer_name(spec: dict) -> str | None:
    """The llama.cpp pre-tokenizer name of a tokenizer.json's pre_tokenizer, or None."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # ByteLevel's built-in split is GPT-2's regex
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers", [])
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and steps[0].get("pattern", {}).get("Regex") == QWEN2_PATTERN
            and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)
        ):
            return "qwen2"
    return None


def _tokenizer_spec(tokenizer) -> tuple[dict, str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GGUFExportError("GGUF export needs a fast (tokenizers-library) tokenizer.")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise GGUFExportError(
            "GGUF export supports byte-level BPE tokenizers (pico's trained BPE, Qwen2); this "
            f"one is {model.get('type')} with a {(spec.get('decoder') or {}).get('type')} decoder."
        )
    pre = _pre_tokenizer_name(spec)
    if pre is None:
        raise GGUFExportError(
            "the tokenizer's pre-tokenizer is not one llama.cpp knows (GPT-2 byte-level or "
            "Qwen2's split regex), so a GGUF would tokenize differently."
        )
    return spec, pre


def check_gguf_exportable(shape: ModelConfig, tokenizer, gguf_type: str) -> None:
    """Raise GGUFExportError naming the first thing llama.cpp cannot represent."""
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type '{gguf_type}'; choose one of {list(GGUF_TYPES)}.")
    if shape.n_heads % shape.n_kv_heads:
        raise GGUFExportError(
            f"n_heads={shape.n_heads} is not a multiple of n_kv_heads={shape.n_kv_heads}."
        )
    if shape.head_dim % 2 or shape.head_dim * shape.n_heads != shape.d_model:
        raise GGUFExportError(
            f"head_dim={shape.head_dim} must be even and n_heads * head_dim equal "
            f"d_model={shape.d_model}."
        )
    if gguf_type == "q8_0":
        for name, width in (("d_model", shape.d_model), ("mlp_hidden", shape.mlp_hidden)):
            if width % _Q8_BLOCK:
                raise GGUFExportError(
                    f"q8_0 quantizes rows in blocks of {_Q8_BLOCK} but {name}={width} is not a "
                    f"multiple of {_Q8_BLOCK}; export with --gguf f16."
                )
    if tokenizer is None:
        raise GGUFExportError("the checkpoint has no tokenizer files to embed in the GGUF.")
    _tokenizer_spec(tokenizer)
    if len(tokenizer) > shape.vocab_size:
        raise GGUFExportError(
            f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size={shape.vocab_size}."
        )


def _vocab_arrays(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str], str]:
    import gguf

    spec, pre = _tokenizer_spec(tokenizer)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # a padding row no tokenizer id reaches
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges, pre


def _tensor_data(name: str, w: torch.Tensor, gguf_type: str):
    """(array, raw dtype or None) of one tensor in the GGUF's storage type."""
    import gguf

    if w.ndim == 1:
        return w.to(torch.float32).numpy(), None
    if gguf_type == "f16":
        return w.to(torch.float16).numpy(), None
    data = w.to(torch.float32).numpy()
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), (
        gguf.GGMLQuantizationType.Q8_0
    )


def write_gguf(
    path: Path,
    state: dict[str, torch.Tensor],
    shape: ModelConfig,
    tokenizer,
    gguf_type: str,
    *,
    name: str = "pico",
    progress: bool = False,
) -> None:
    """Write `state` (float weights, our/transformers names) as a llama GGUF file at `path`."""
    import gguf

    check_gguf_exportable(shape, tokenizer, gguf_type)
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, shape.n_layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(shape.max_seq_len)
    writer.add_embedding_length(shape.d_model)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.mlp_hidden)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.norm_eps)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges, pre = _vocab_arrays(tokenizer, shape.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # pico trains without a BOS token

    for key, w in state.items():
        gguf_name = names.get_name(key, try_suffixes=(".weight",))
        if gguf_name is None:
            raise GGUFExportError(f"no GGUF name for tensor '{key}'.")
        w = w.detach().to("cpu", torch.float32)
        if key.endswith("self_attn.q_proj.weight"):
            w = permute_qk(w, shape.n_heads)
        elif key.endswith("self_attn.k_proj.weight"):
            w = permute_qk(w, shape.n_kv_heads)
        data, raw = _tensor_data(key, w, gguf_type)
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()
