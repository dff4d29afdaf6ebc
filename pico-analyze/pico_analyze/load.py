"""Sources -> one uniform in-memory view of a checkpoint.

Defines what every source in :mod:`pico_analyze.sources` returns (our run directory via
``pico_format``, the original pico-train layout, or a Hugging Face Hub repository holding either;
opened with :func:`pico_analyze.sources.open_source`) and writes nothing: :meth:`Source.load`
returns a :class:`Checkpoint` holding float32 tensors (bf16 captures are upcast; float64 stays)
keyed by canonical module names, the Hugging Face Llama names that pico-train's model uses
(``model.layers.3.self_attn.v_proj``).

    Checkpoint.weights                       {module: W (out, in)}            split-independent
    Checkpoint.splits[split].activations     {module: module output (n_rows, width)}
    Checkpoint.splits[split].gradients       {module: dLoss/dW (out, in)}
    Checkpoint.splits[split].token_ids       the captured batch, to check that two captures saw
                                             the same inputs (None when the source has none)

A :class:`LoadRequest` names exactly the tensors an analysis needs, so each checkpoint is read
once, and only in part.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


class SourceError(RuntimeError):
    """A run that cannot be opened or read (missing files, unknown layout, no checkpoints)."""


class MissingData(LookupError):
    """A tensor an analysis asked for is not in this checkpoint (recorded as a note)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
