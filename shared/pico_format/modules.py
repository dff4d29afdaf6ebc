"""Module names: the keys of captures and of the Hugging Face weights, defined once.

pico-train's model uses transformers' Llama names, so block ``i``'s modules are
``model.layers.{i}.<suffix>`` (``model.layers.3.self_attn.v_proj``) and the block itself,
``model.layers.{i}``, is the module whose output is the residual stream after block ``i``. The
capture writer, the capture config's default patterns, pico-analyze's readers and the tests build
and parse names only through :func:`module_name` and :func:`parse_module_name`.
"""

from __future__ import annotations

import re

LAYERS = "model.layers"  # the ModuleList of decoder blocks
RESIDUAL = "residual"  # the suffix that names the block itself (its output: the residual stream)

# Module suffixes inside a decoder block.
ATTENTION_SUFFIXES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
)
MLP_SUFFIXES = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLOCK_SUFFIXES = ATTENTION_SUFFIXES + MLP_SUFFIXES
# What pico-train (and the original pico-train) capture by default.
DEFAULT_CAPTURE_SUFFIXES = ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")

_BLOCK_MODULE = re.compile(rf"^{re.escape(LAYERS)}\.(\d+)(?:\.(.+))?$")


def module_name(layer: int | str, suffix: str) -> str:
    """Name of `suffix` in block `layer`; suffix ``residual`` names the block itself.

    `layer` may be a pattern such as ``"*"`` (fnmatch patterns of the capture config).
    """
    block = f"{LAYERS}.{layer}"
    return block if suffix == RESIDUAL else f"{block}.{suffix}"


def parse_module_name(name: str) -> tuple[int, str] | None:
    """(layer, suffix) of a block module name (suffix ``residual`` for the block); else None."""
    match = _BLOCK_MODULE.match(name)
    return (int(match.group(1)), match.group(2) or RESIDUAL) if match else None


def weight_name(module: str) -> str:
    """The key of a module's weight in model.safetensors (``<module>.weight``)."""
    return f"{module}.weight"


def layer_index(name: str) -> int:
    """The block index of a module name, -1 for modules outside the blocks (embeddings, head)."""
    parsed = parse_module_name(name)
    return parsed[0] if parsed else -1
