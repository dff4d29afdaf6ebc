"""Learning-dynamics captures: one folder per split inside a checkpoint.

    capture/<split>/activations.safetensors   {module: (n_rows, width)}   one row per sequence
                                              (positions last | mean), or per (sequence,
                                              position) pair, sequence-major (all | sample)
    capture/<split>/weights.safetensors       {module: weight (out, in)}  fp32; only in runs
                                              written before `weights_in_model`: the weights
                                              are now read from the checkpoint's
                                              model.safetensors (key "<module>.weight")
    capture/<split>/gradients.safetensors     {module: dLoss/dWeight (out, in)}  fp32, mean over
                                              the captured batch's tokens
    capture/<split>/manifest.json             CaptureManifest
    capture/<split>/text.json                 the captured sequences decoded, for people

Row i of every activation tensor (positions last/mean) belongs to sequence i of `token_ids`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pico_format.layout import (
    CAPTURE,
    CAPTURE_KINDS,
    CAPTURE_MANIFEST,
    POSITION_POLICIES,
    SCHEMA_VERSION,
    CheckpointPaths,
    RunPaths,
)
from pico_format.modules import weight_name
from pico_format.run import RunFormatError, read_json, write_json_atomic

__all__ = [
    "POSITION_POLICIES",
    "CaptureManifest",
    "CaptureReader",
    "TensorInfo",
    "capture_splits",
    "load_capture",
    "open_capture",
    "write_capture",
]


@dataclass
class TensorInfo:
    shape: list[int]
    dtype: str


@dataclass
class CaptureManifest:
    """What one split's capture holds; written beside the tensors."""

    step: int
    split: str  # train | eval
    modules: list[str]  # module names in layer order (e.g. model.layers.0.self_attn.v_proj)
    layers: dict[str, int]  # module -> layer index (-1 for modules outside the blocks)
    positions: str  # last | all | sample | mean
    position_indices: list[int] | None  # token positions captured (sample/last); None for all/mean
    seq_len: int
    token_ids: list[list[int]]  # the captured batch: (batch, seq_len) input ids, row i = sequence i
    tensors: dict[str, dict[str, TensorInfo]] = field(
        default_factory=dict
    )  # kind -> module -> info
    loss: float | None = None  # mean next-token loss of the captured batch
    activation_dtype: str = "float32"
    # True: the weights listed under tensors["weights"] are not stored again in the capture but
    # read from the checkpoint's model.safetensors (key "<module>.weight"); older runs: False.
    weights_in_model: bool = False
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str = "manifest") -> CaptureManifest:
        try:
            tensors = {
                kind: {m: TensorInfo(**info) for m, info in mods.items()}
                for kind, mods in raw.pop("tensors", {}).items()
            }
            return cls(**raw, tensors=tensors)
        except TypeError as err:
            raise RunFormatError(f"{source} is not a capture manifest: {err}.") from None


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def write_capture(
    ckpt: CheckpointPaths,
    manifest: CaptureManifest,
    tensors: dict[str, dict[str, torch.Tensor]],
    texts: list[str] | None = None,
    *,
    weights_in_model: dict[str, TensorInfo] | None = None,
) -> None:
    """Write one split: a safetensors file per kind, then the manifest (which lists them).

    weights_in_model: module -> shape/dtype of weights that the checkpoint's model.safetensors
    already holds; they are listed in the manifest and read from there, not stored twice.
    """
    folder = ckpt.capture_dir(manifest.split)
    folder.mkdir(parents=True, exist_ok=True)
    manifest.tensors = {}
    if weights_in_model is not None:
        manifest.tensors["weights"] = dict(weights_in_model)
        manifest.weights_in_model = True
    for kind, by_module in tensors.items():
        if kind not in CAPTURE_KINDS:
            raise ValueError(f"Unknown capture kind '{kind}'; expected one of {CAPTURE_KINDS}.")
        cpu = {m: t.detach().cpu().contiguous() for m, t in by_module.items()}
        save_file(cpu, str(ckpt.capture_file(manifest.split, kind)))
        manifest.tensors[kind] = {
            m: TensorInfo(list(t.shape), _dtype_name(t)) for m, t in cpu.items()
        }
    write_json_atomic(ckpt.capture_manifest(manifest.split), manifest.to_json())
    if texts is not None:
        write_json_atomic(ckpt.capture_text(manifest.split), texts)


class CaptureReader:
    """Lazy reader of one split's capture: tensors are read one module at a time.

    `ckpt` is a checkpoint folder, as :class:`CheckpointPaths` or a path
    (``CaptureReader("runs/demo/checkpoints/step_00000100", "eval")``).
    """

    def __init__(self, ckpt: CheckpointPaths | str | Path, split: str):
        if not isinstance(ckpt, CheckpointPaths):
            ckpt = CheckpointPaths(Path(ckpt))
        self.ckpt, self.split = ckpt, split
        path = ckpt.capture_manifest(split)
        if not path.is_file():
            raise RunFormatError(f"Checkpoint '{ckpt.root}' has no '{split}' capture ({path}).")
        self.manifest = CaptureManifest.from_json(read_json(path), str(path))

    @property
    def kinds(self) -> list[str]:
        return list(self.manifest.tensors)

    def modules(self, kind: str) -> list[str]:
        """Modules captured for `kind`, in layer order."""
        held = self.manifest.tensors.get(kind, {})
        return [m for m in self.manifest.modules if m in held]

    def get(self, kind: str, module: str, device: str | torch.device = "cpu") -> torch.Tensor:
        held = self.manifest.tensors.get(kind)
        if held is None:
            raise KeyError(
                f"No {kind} in the '{self.split}' capture of '{self.ckpt.root}'; "
                f"it holds {self.kinds}."
            )
        if module not in held:
            raise KeyError(
                f"Module '{module}' not captured ({kind}, '{self.split}'); captured: "
                f"{', '.join(self.modules(kind))}."
            )
        path, key = self.location(kind, module)
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise RunFormatError(f"Corrupt capture file '{path}': {err}.") from None

    def location(self, kind: str, module: str) -> tuple[Path, str]:
        """The safetensors file and key holding `kind` of `module` (weights may live in the
        checkpoint's model.safetensors)."""
        if kind == "weights" and self.manifest.weights_in_model:
            return self.ckpt.model_weights, weight_name(module)
        return self.ckpt.capture_file(self.split, kind), module

    def texts(self) -> list[str] | None:
        path = self.ckpt.capture_text(self.split)
        return read_json(path) if path.is_file() else None


def capture_splits(ckpt: CheckpointPaths) -> list[str]:
    """Splits captured in a checkpoint folder."""
    root = Path(ckpt.root) / CAPTURE
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CAPTURE_MANIFEST).is_file())


def open_capture(run_dir, step: int, split: str) -> CaptureReader:
    """The capture of `split` at checkpoint `step` of the run in `run_dir`."""
    return CaptureReader(RunPaths(run_dir).checkpoint(step), split)


def load_capture(
    run_dir, step: int, split: str, kind: str, module: str, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """One captured tensor, by step, split (train | eval), kind and module name."""
    return open_capture(run_dir, step, split).get(kind, module, device)
