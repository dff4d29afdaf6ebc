"""The original pico-train run layout, mapped onto our names.

Reads (names of the original format, defined here once)::

    RUN/training_config.yaml                      model: d_model, n_layers, attention_n_heads,
                                                  attention_n_kv_heads
    RUN/checkpoints/step_N/learning_dynamics/
        {train,val}_{activations,weights,gradients}.pt
                                                  {module name: tensor}, loaded with
                                                  torch.load(weights_only=True)

Module names such as ``_forward_module.module.layers.3.attention.v_proj`` (whatever wrapper prefix
precedes ``layers.``) map to ours: ``attention.{q,k,v,o}_proj`` -> ``self_attn.{q,k,v,o}_proj``,
``swiglu.w_0/w_1/w_2`` -> ``mlp.gate_proj/up_proj/down_proj``. Split ``val`` is our ``eval`` (the
same held-out batch at every step). Activations may be bf16 (upcast to float32); the final step
may hold only ``val`` files. No token ids are stored, so same-input checks fall back to the split
name. Writes nothing.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path, PurePosixPath

import torch
import yaml

from pico_analyze.load import (
    Checkpoint,
    LoadRequest,
    ModelShape,
    Source,
    SourceError,
    SplitData,
    as_float32,
)
from pico_format import CAPTURE_KINDS as KINDS
from pico_format.layout import parse_step_dirname
from pico_format.modules import module_name, parse_module_name

ORIGINAL_CONFIG = "training_config.yaml"
ORIGINAL_CHECKPOINTS = "checkpoints"
LEARNING_DYNAMICS = "learning_dynamics"
SPLITS = {"train": "train", "val": "eval"}  # original split name -> ours
THEIRS = {ours: theirs for theirs, ours in SPLITS.items()}
SUFFIXES = {
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.o_proj": "self_attn.o_proj",
    "swiglu.w_0": "mlp.gate_proj",
    "swiglu.w_1": "mlp.up_proj",
    "swiglu.w_2": "mlp.down_proj",
}
_MODULE = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(attention\.[qkvo]_proj|swiglu\.w_[012]|self_attn\.[qkvo]_proj"
    r"|mlp\.(?:gate|up|down)_proj)(?:\.weight)?$"
)


def canonical_name(original: str) -> str | None:
    """Our module name for an original key, whatever its wrapper prefix; None if not a block."""
    match = _MODULE.search(original)
    if match is None:
        return None
    suffix = SUFFIXES.get(match.group(2), match.group(2))
    return module_name(int(match.group(1)), suffix)


def original_name(name: str, prefix: str = "") -> str:
    """The original pico-train key of one of our block module names (the inverse of
    canonical_name), e.g. ``model.layers.3.mlp.down_proj`` -> ``{prefix}layers.3.swiglu.w_2``."""
    parsed = parse_module_name(name)
    theirs = {ours: original for original, ours in SUFFIXES.items()}
    if parsed is None or parsed[1] not in theirs:
        raise ValueError(f"'{name}' has no name in the original pico-train layout.")
    return f"{prefix}layers.{parsed[0]}.{theirs[parsed[1]]}"


def dynamics_file(split: str, kind: str) -> str:
    """File name of one original learning-dynamics dict (split in the original's names)."""
    return f"{split}_{kind}.pt"


class OriginalRun(Source):
    """A run directory of the original pico-train. `files` (relative POSIX paths) replaces the
    folder scan when the files are not local yet (a Hub listing)."""

    def __init__(self, root: str | Path, name: str | None = None, files: set[str] | None = None):
        self.root = Path(root)
        self.name = name or self.root.resolve().name
        self.files = files
        self._shape: ModelShape | None = None
        self._dirs: dict[int, str] | None = None

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / ORIGINAL_CONFIG).is_file() and (root / ORIGINAL_CHECKPOINTS).is_dir()

    @staticmethod
    def detect_files(files: set[str]) -> bool:
        return ORIGINAL_CONFIG in files

    @staticmethod
    def metadata_files(files: set[str]) -> list[str]:
        return [ORIGINAL_CONFIG]

    def _listing(self) -> set[str]:
        """Relative POSIX paths of the learning-dynamics files (listing or folder scan)."""
        if self.files is not None:
            return self.files
        found = set()
        ckpts = self.root / ORIGINAL_CHECKPOINTS
        if ckpts.is_dir():
            for f in ckpts.glob(f"*/{LEARNING_DYNAMICS}/*.pt"):
                found.add(f.relative_to(self.root).as_posix())
        return found

    def _step_dirs(self) -> dict[int, str]:
        if self._dirs is None:
            self._dirs = {}
            for f in self._listing():
                parts = PurePosixPath(f).parts
                if (
                    len(parts) == 4
                    and parts[0] == ORIGINAL_CHECKPOINTS
                    and parts[2] == LEARNING_DYNAMICS
                    and parts[3].endswith(".pt")
                ):
                    step = parse_step_dirname(parts[1])
                    if step is not None:
                        self._dirs[step] = parts[1]
        return self._dirs

    def _rel(self, step: int, split: str, kind: str) -> str:
        """Relative path of the file holding `kind` of our split `split` at `step`."""
        return (
            PurePosixPath(ORIGINAL_CHECKPOINTS)
            / self._step_dirs()[step]
            / LEARNING_DYNAMICS
            / dynamics_file(THEIRS.get(split, split), kind)
        ).as_posix()

    def _has(self, step: int, split: str, kind: str) -> bool:
        return self._rel(step, split, kind) in self._listing()

    def steps(self) -> list[int]:
        return sorted(self._step_dirs())

    def shape(self) -> ModelShape:
        if self._shape is None:
            path = self.root / ORIGINAL_CONFIG
            try:
                raw = yaml.safe_load(path.read_text()) or {}
                model = raw["model"]
                d, heads = int(model["d_model"]), int(model["attention_n_heads"])
                self._shape = ModelShape(
                    d_model=d,
                    n_layers=int(model["n_layers"]),
                    n_heads=heads,
                    n_kv_heads=int(model.get("attention_n_kv_heads") or heads),
                    head_dim=d // heads,
                )
            except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
                raise SourceError(f"Cannot read the model shape from '{path}': {err!r}.") from None
        return self._shape

    def splits(self, step: int) -> list[str]:
        return sorted(
            ours
            for theirs, ours in SPLITS.items()
            if any(self._has(step, ours, kind) for kind in KINDS)
        )

    def captured_suffixes(self) -> list[str] | None:
        return None  # known only by reading a .pt file

    def _weights_split(self, step: int) -> str | None:
        """Weights are the same in every split's file; take val (the final step may lack train)."""
        return next((s for s in ("eval", "train") if self._has(step, s, "weights")), None)

    def files_needed(self, step: int, request: LoadRequest) -> list[str]:
        out = {
            self._rel(step, split, kind)
            for split, kinds in request.splits.items()
            for kind in kinds
            if self._has(step, split, kind)
        }
        split = self._weights_split(step)
        if request.weights and split is not None:
            out.add(self._rel(step, split, "weights"))
        return sorted(out)

    def _read(
        self, step: int, split: str, kind: str, modules: set[str], device: str
    ) -> dict[str, torch.Tensor]:
        path = self.root / self._rel(step, split, kind)
        try:
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # an old, non-zip file cannot be memory-mapped
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # weights_only refused an object that is not a tensor container: loading it would
            # run code, so it is not loaded (torch's hint to pass weights_only=False is not ours)
            raise SourceError(
                f"'{path}' holds pickled code (objects other than tensors), so it was not loaded."
            ) from None
        except (OSError, EOFError, RuntimeError) as err:
            raise SourceError(f"Cannot read '{path}': {str(err).splitlines()[0]}.") from None
        if not isinstance(raw, dict):
            raise SourceError(f"'{path}' holds a {type(raw).__name__}, not a dict of tensors.")
        out = {}
        for key, tensor in raw.items():
            name = canonical_name(str(key))
            if name in modules and torch.is_tensor(tensor):
                if kind == "activations" and tensor.ndim > 2:
                    tensor = tensor.reshape(-1, tensor.shape[-1])  # rows = (sequence, position)
                out[name] = as_float32(tensor, device)
        return out

    def load(self, step: int, request: LoadRequest, device: str = "cpu") -> Checkpoint:
        out = Checkpoint(run=self.name, step=step, shape=self.shape())
        present = self.splits(step)
        for split, kinds in request.splits.items():
            if split not in present:
                out.missing_splits[split] = (
                    f"split '{split}' ({THEIRS.get(split, split)}_*.pt) not captured at step "
                    f"{step} (captured: {', '.join(present) or 'none'})"
                )
                continue
            data = SplitData()
            for kind, modules in kinds.items():
                if self._has(step, split, kind):
                    getattr(data, kind).update(self._read(step, split, kind, modules, device))
            out.splits[split] = data
        split = self._weights_split(step)
        if request.weights and split is not None:
            out.weights = self._read(step, split, "weights", request.weights, device)
        return out
