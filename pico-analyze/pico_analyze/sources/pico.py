"""Our run directory, read through ``pico_format`` only (no path is spelled here).

Reads, per checkpoint: ``config.json`` (the model shape), the capture of each split through
:class:`pico_format.CaptureReader` (activations, gradients, token ids) and the weights, from a
split's capture when it holds them, else from the Hugging Face ``model.safetensors``. Writes
nothing. Tensors are read one module at a time, only those requested.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from safetensors import SafetensorError, safe_open

from pico_analyze.load import (
    Checkpoint,
    LoadRequest,
    ModelShape,
    Source,
    SourceError,
    SplitData,
    as_float32,
)
from pico_format import (
    CaptureReader,
    CheckpointPaths,
    RunFormatError,
    RunPaths,
    capture_splits,
    list_checkpoints,
    read_json,
)
from pico_format.layout import (
    CAPTURE_MANIFEST,
    CHECKPOINT_MANIFEST,
    CHECKPOINTS,
    CONFIG,
    EVAL,
    LATEST,
    MODEL_CONFIG,
    RUN_INFO,
    parse_step_dirname,
)
from pico_format.modules import RESIDUAL, module_name, weight_name

# Small files fetched first from a Hub copy: they list the steps, splits and modules.
METADATA_NAMES = {
    RUN_INFO,
    CONFIG,
    LATEST,
    CHECKPOINT_MANIFEST,
    MODEL_CONFIG,
    CAPTURE_MANIFEST,
    EVAL,
}
WEIGHT_SPLIT_ORDER = ("eval", "train")  # captured weights are identical across splits


def shape_from_hf_config(raw: dict, source: str) -> ModelShape:
    """ModelShape from a transformers Llama config.json."""
    try:
        d, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        return ModelShape(
            d_model=d,
            n_layers=int(raw["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or d // heads),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise SourceError(f"{source} is not a Llama model config: {err!r}.") from None


class PicoRun(Source):
    """A run directory written by pico-train (see ``pico_format.layout``)."""

    def __init__(self, root: str | Path, name: str | None = None):
        self.root = Path(root)
        self.run = RunPaths(self.root)
        self.name = name or self.root.resolve().name
        self._shape: ModelShape | None = None

    # -- discovery -----------------------------------------------------------------------------

    @staticmethod
    def detect(root: Path) -> bool:
        run = RunPaths(root)
        return run.info.is_file() or bool(list_checkpoints(run))

    @staticmethod
    def detect_files(files: set[str]) -> bool:
        """Whether a Hub listing (relative POSIX paths) holds a run in our format."""
        return bool(PicoRun.steps_from_files(files))

    @staticmethod
    def steps_from_files(files: set[str]) -> list[int]:
        steps = set()
        for f in files:
            parts = PurePosixPath(f).parts
            if len(parts) == 3 and parts[0] == CHECKPOINTS and parts[2] == CHECKPOINT_MANIFEST:
                step = parse_step_dirname(parts[1])
                if step is not None:
                    steps.add(step)
        return sorted(steps)

    @staticmethod
    def metadata_files(files: set[str]) -> list[str]:
        return sorted(f for f in files if PurePosixPath(f).name in METADATA_NAMES)

    def steps(self) -> list[int]:
        return list_checkpoints(self.run)

    def shape(self) -> ModelShape:
        if self._shape is None:
            steps = self.steps()
            if not steps:
                raise SourceError(f"'{self.root}' holds no complete checkpoint.")
            ckpt = self.run.checkpoint(steps[-1])
            try:
                raw = read_json(ckpt.model_config)
            except RunFormatError as err:
                raise SourceError(str(err)) from None
            self._shape = shape_from_hf_config(raw, str(ckpt.model_config))
        return self._shape

    def splits(self, step: int) -> list[str]:
        return capture_splits(self.run.checkpoint(step))

    def captured_suffixes(self) -> list[str] | None:
        steps = self.steps()
        if not steps:
            return None
        ckpt = self.run.checkpoint(steps[-1])
        out: list[str] = []
        for split in capture_splits(ckpt):
            manifest = CaptureReader(ckpt, split).manifest
            for module in manifest.modules:
                layer = manifest.layers.get(module, -1)  # the manifest says which block
                if layer < 0:
                    continue  # outside the blocks (embeddings, head)
                block = module_name(layer, RESIDUAL)
                suffix = RESIDUAL if module == block else module.removeprefix(f"{block}.")
                if suffix not in out:
                    out.append(suffix)
        return out

    # -- reading -------------------------------------------------------------------------------

    def _weight_sources(self, ckpt: CheckpointPaths, modules: set[str]) -> dict[str, str | None]:
        """module -> the split whose capture holds its weight, or None for model.safetensors."""
        plan: dict[str, str | None] = {m: None for m in modules}
        present = capture_splits(ckpt)
        for split in [s for s in WEIGHT_SPLIT_ORDER if s in present] + present:
            held = set(CaptureReader(ckpt, split).modules("weights"))
            for m in modules:
                if plan[m] is None and m in held:
                    plan[m] = split
        return plan

    def files_needed(self, step: int, request: LoadRequest) -> list[str]:
        """Relative POSIX paths of the files `request` reads at `step` (for Hub downloads)."""
        rel = RunPaths(Path(".")).checkpoint(step)
        ckpt = self.run.checkpoint(step)
        present = set(capture_splits(ckpt))
        out = set()
        for split, kinds in request.splits.items():
            if split in present:
                out |= {rel.capture_file(split, kind).as_posix() for kind in kinds}
        for module, split in self._weight_sources(ckpt, request.weights).items():
            path = rel.model_weights
            if split is not None:  # newer captures keep their weights in model.safetensors
                held = CaptureReader(ckpt, split).location("weights", module)[0]
                path = rel.root / held.relative_to(ckpt.root)
            out.add(path.as_posix())
        return sorted(out)

    def load(self, step: int, request: LoadRequest, device: str = "cpu") -> Checkpoint:
        ckpt = self.run.checkpoint(step)
        out = Checkpoint(run=self.name, step=step, shape=self.shape())
        present = capture_splits(ckpt)
        for split, kinds in request.splits.items():
            if split not in present:
                out.missing_splits[split] = (
                    f"split '{split}' not captured at step {step} "
                    f"(captured: {', '.join(present) or 'none'})"
                )
                continue
            reader = CaptureReader(ckpt, split)
            data = SplitData(
                token_ids=reader.manifest.token_ids, positions=reader.manifest.positions
            )
            for kind, modules in kinds.items():
                held = set(reader.modules(kind))
                target = getattr(data, kind)
                for m in sorted(modules & held):
                    target[m] = as_float32(reader.get(kind, m), device)
            out.splits[split] = data
        plan = self._weight_sources(ckpt, request.weights)
        from_model = sorted(m for m, split in plan.items() if split is None)
        for m, split in plan.items():
            if split is not None:
                out.weights[m] = as_float32(CaptureReader(ckpt, split).get("weights", m), device)
        if from_model and ckpt.model_weights.is_file():
            try:
                with safe_open(str(ckpt.model_weights), framework="pt") as f:
                    keys = set(f.keys())
                    for m in from_model:
                        if weight_name(m) in keys:
                            out.weights[m] = as_float32(f.get_tensor(weight_name(m)), device)
            except (SafetensorError, OSError) as err:
                raise SourceError(f"Corrupt weights file '{ckpt.model_weights}': {err}.") from None
        return out
