"""Sources -> one uniform in-memory view of a checkpoint.

Reads a run through one of the sources in :mod:`pico_analyze.sources` (our run directory via
``pico_format``, the original pico-train layout, or a Hugging Face Hub repository holding either)
and writes nothing: :meth:`Source.load` returns a :class:`Checkpoint` holding float32 tensors
(bf16 captures are upcast) keyed by canonical module names, the Hugging Face Llama names that
pico-train's model uses (``model.layers.3.self_attn.v_proj``).

    Checkpoint.weights                       {module: W (out, in)}            split-independent
    Checkpoint.splits[split].activations     {module: module output (n_rows, width)}
    Checkpoint.splits[split].gradients       {module: dLoss/dW (out, in)}
    Checkpoint.splits[split].token_ids       the captured batch, to check that two captures saw
                                             the same inputs (None when the source has none)

A :class:`LoadRequest` names exactly the tensors an analysis needs, so each checkpoint is read
once, and only in part.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch

KINDS = ("activations", "weights", "gradients")
SPLIT_KINDS = ("activations", "gradients")  # kinds that depend on the captured batch

# Module suffixes inside a decoder block (transformers' Llama names, as in pico_train.model).
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLOCK_SUFFIXES = ATTENTION + MLP
# What pico-train (and the original pico-train) capture by default.
DEFAULT_SUFFIXES = ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")

# The block's output (the residual stream after block i), captured with capture.residual.
RESIDUAL = "residual"
_CANONICAL = re.compile(r"^model\.layers\.(\d+)(?:\.(.+))?$")


class SourceError(RuntimeError):
    """A run that cannot be opened or read (missing files, unknown layout, no checkpoints)."""


class MissingData(LookupError):
    """A tensor an analysis asked for is not in this checkpoint (recorded as a note)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def module_name(layer: int, suffix: str) -> str:
    """Canonical module name of `suffix` in block `layer` (transformers' Llama naming);
    suffix ``residual`` names the block itself (its output is the residual stream)."""
    return f"model.layers.{layer}" if suffix == RESIDUAL else f"model.layers.{layer}.{suffix}"


def parse_module(name: str) -> tuple[int, str] | None:
    """(layer, suffix) of a canonical block module name, or None."""
    match = _CANONICAL.match(name)
    return (int(match.group(1)), match.group(2) or RESIDUAL) if match else None


@dataclass(frozen=True)
class ModelShape:
    """The attention geometry the circuits need, read from the run's model config."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise SourceError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}."
            )

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """g(h) = h // (n_heads / n_kv_heads): the key/value head query head `head` reads."""
        return head // self.group_size


@dataclass
class LoadRequest:
    """The tensors to read from each checkpoint: canonical module names per kind and split."""

    weights: set[str] = field(default_factory=set)
    splits: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # split -> kind -> mods

    def add(self, kind: str, module: str, split: str | None = None) -> None:
        if kind == "weights":
            self.weights.add(module)
        else:
            self.splits.setdefault(split, {}).setdefault(kind, set()).add(module)

    def merge(self, other: LoadRequest) -> None:
        self.weights |= other.weights
        for split, kinds in other.splits.items():
            for kind, modules in kinds.items():
                self.splits.setdefault(split, {}).setdefault(kind, set()).update(modules)


@dataclass
class SplitData:
    """One split's captured tensors at one checkpoint."""

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    token_ids: list[list[int]] | None = None
    positions: str | None = None


@dataclass
class Checkpoint:
    """Everything an analysis reads from one step of one run, already in memory."""

    run: str
    step: int
    shape: ModelShape
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    splits: dict[str, SplitData] = field(default_factory=dict)
    missing_splits: dict[str, str] = field(default_factory=dict)  # split -> why it is absent

    def tensor(self, kind: str, module: str, split: str | None = None) -> torch.Tensor:
        """The tensor of `module`; raises MissingData naming what is absent."""
        if kind == "weights":
            held = self.weights
        else:
            if split not in self.splits:
                raise MissingData(
                    self.missing_splits.get(split)
                    or f"split '{split}' not captured at step {self.step}"
                )
            held = getattr(self.splits[split], kind)
        if module not in held:
            where = f" in split '{split}'" if kind != "weights" else ""
            raise MissingData(f"{kind} of {module} not held{where} at step {self.step}")
        return held[module]


def as_float32(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Move a stored tensor to `device` as float32 (bf16/fp16 captures are upcast)."""
    t = t.to(device)
    return t.float() if t.dtype != torch.float64 else t


class Source(ABC):
    """A run to analyse. Implementations store only paths and names, so they pickle to workers."""

    name: str

    @abstractmethod
    def steps(self) -> list[int]:
        """Steps of the checkpoints that can be analysed, ascending."""

    @abstractmethod
    def shape(self) -> ModelShape:
        """Attention geometry of the model (the same at every step)."""

    @abstractmethod
    def splits(self, step: int) -> list[str]:
        """Capture splits present at `step` (our names: train, eval)."""

    def captured_suffixes(self) -> list[str] | None:
        """Block-module suffixes whose captures the run holds, if known without reading tensors."""
        return None

    def prepare(self, steps: list[int], request: LoadRequest) -> None:  # noqa: B027
        """Make the files of `steps` readable (the Hub source downloads them); local: nothing."""

    @abstractmethod
    def load(self, step: int, request: LoadRequest, device: str = "cpu") -> Checkpoint:
        """Read the requested tensors of one checkpoint; what is absent is named in .missing."""


def open_source(spec: str | Path, revision: str | None = None) -> Source:
    """A run from a local folder (ours or the original layout) or a Hub repo id.

    `spec` is a path; ``hf://owner/name[@revision]``; or a bare ``owner/name`` that is not a
    local path.
    """
    from pico_analyze.sources.hub import HubRun, parse_hub_spec
    from pico_analyze.sources.original import OriginalRun
    from pico_analyze.sources.pico import PicoRun

    text = str(spec)
    path = Path(text).expanduser()
    if not text.startswith("hf://") and path.exists():
        if not path.is_dir():
            raise SourceError(f"'{path}' is a file; give a run directory.")
        if PicoRun.detect(path):
            return PicoRun(path)
        if OriginalRun.detect(path):
            return OriginalRun(path)
        raise SourceError(
            f"'{path}' is neither a pico run directory (checkpoints/step_*/checkpoint.json) nor "
            f"an original pico-train run (training_config.yaml + checkpoints/step_*/"
            f"learning_dynamics)."
        )
    hub = parse_hub_spec(text, revision)
    if hub is None:
        raise SourceError(
            f"'{text}' is not a directory, and not a Hugging Face repo id "
            f"(owner/name or hf://owner/name[@revision])."
        )
    return HubRun(*hub)
