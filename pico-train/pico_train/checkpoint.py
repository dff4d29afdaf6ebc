"""Checkpoint writer and reader: what a checkpoint holds and how each part is written.

Reads what the training loop holds at a checkpoint step (:class:`CheckpointContents`) and writes,
through :func:`write_checkpoint`, one checkpoint folder opened by
`pico_format.checkpoint_transaction` (file names from `pico_format.CheckpointPaths`):
- the learning-dynamics captures of each configured split (capture.py);
- the Hugging Face files: ``config.json`` (model_type llama), ``model.safetensors``,
  ``generation_config.json`` and the tokenizer files, so
  ``AutoModelForCausalLM.from_pretrained(folder)`` works with no custom code;
- ``state/``: optimizer moments keyed by parameter name, RNG states and the trainer's counters,
  data cursor and schedule position, in safetensors + JSON (nothing pickled), for an exact resume;
- ``eval.json``: the held-out scores.
The loop decides when to checkpoint; this module decides what goes in and how.
"""

from __future__ import annotations

import hashlib
import json
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pico_format import (
    CheckpointPaths,
    RunFormatError,
    RunPaths,
    checkpoint_transaction,
    latest_step,
    list_checkpoints,
    prune_states,
    read_json,
    write_json_atomic,
)
from pico_format.layout import CHECKPOINTS, MODEL_CONFIG
from pico_train import __version__
from pico_train.capture import capture_learning_dynamics, rows_for_capture
from pico_train.config import ModelConfig, RunConfig, TrainingConfig, validate_model
from pico_train.distributed import Dist
from pico_train.model import PicoDecoder
from pico_train.optim import lr_at
from pico_train.tokenizer import save_tokenizer

# ----------------------------------------------------------------------------------------------
# One checkpoint
# ----------------------------------------------------------------------------------------------


@dataclass
class CheckpointContents:
    """What goes into checkpoint `step`, as the training loop holds it on this rank."""

    step: int  # optimizer steps taken
    model: PicoDecoder
    tokenizer: Any  # a transformers tokenizer, or None
    optimizer: torch.optim.Optimizer
    param_names: list[str]  # the optimizer's parameters, in the order it was given them
    counters: dict[str, int]  # the loop's counters (step, tokens seen, skipped steps...)
    data_fingerprint: str
    scores: dict[str, float]  # held-out evaluation; {} when evaluation is off
    # split -> this rank's rows (n, T+1) of the split's batch: for train its slice of the global
    # batch that step `step` trained on, for eval the whole held-out batch.
    batches: dict[str, torch.Tensor]


def write_checkpoint(
    run: RunPaths, contents: CheckpointContents, config: RunConfig, dist: Dist, autocast=nullcontext
) -> None:
    """Write checkpoint `contents.step` of `run`: captures, model files, training state, eval.

    Every rank calls it (the capture gathers rows across ranks); rank 0 writes into a temporary
    folder that is published whole, then prunes old training states. Returns on every rank once
    the checkpoint is complete.
    """
    opened = checkpoint_transaction(run, contents.step) if dist.is_main else nullcontext(None)
    with opened as ckpt:
        if config.capture.enabled:
            batches = {
                split: rows_for_capture(
                    split, contents.batches[split], config.capture.batch_size, dist
                )
                for split in config.capture.splits
            }
            capture_learning_dynamics(
                contents.model,
                config.capture,
                contents.step,
                batches,
                dist,
                contents.tokenizer,
                ckpt,
                autocast,
            )
        if ckpt is not None:
            save_model_files(ckpt.root, contents.model, contents.tokenizer)
            save_training_state(
                ckpt,
                contents.optimizer,
                contents.param_names,
                trainer_record(contents, config.training),
            )
            write_json_atomic(ckpt.eval, {"step": contents.step, **contents.scores})
    if dist.is_main:
        prune_states(run, config.checkpointing.keep_states)
    dist.barrier()


def trainer_record(contents: CheckpointContents, training: TrainingConfig) -> dict[str, Any]:
    """trainer.json's counters, data cursor and schedule position at checkpoint `step`."""
    step = contents.step
    return {
        "counters": contents.counters,
        "data_fingerprint": contents.data_fingerprint,
        # The order is a function of the batch index: the cursor is the next one.
        "data_cursor": {
            "next_batch": step,
            "sequences_consumed": step * training.global_batch_size,
        },
        # The schedule is a pure function of the step (optim.lr_at).
        "scheduler": {
            "schedule": training.schedule,
            "step": step,
            "next_lr": lr_at(step, training) if step < training.max_steps else None,
        },
    }


# ----------------------------------------------------------------------------------------------
# Hugging Face model files
# ----------------------------------------------------------------------------------------------


def hf_config(
    model: ModelConfig,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """config.json of a transformers Llama model with our shape.

    The rotary base is written both the transformers 4 way (``rope_theta``) and the
    transformers 5 way (``rope_parameters``), so either version and GGUF converters read it.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": model.d_model,
        "intermediate_size": model.mlp_hidden,
        "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads,
        "num_key_value_heads": model.n_kv_heads,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab_size,
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm_eps,
        "rope_theta": model.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": model.init_std,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
        "dtype": "float32",
        "pico_version": __version__,
        # Which transformers wrote the files: without it, transformers 5 treats a local folder
        # as possibly an old Mistral tokenizer and warns about its split regex.
        "transformers_version": metadata.version("transformers"),
    }


def model_config_from_hf(raw: dict[str, Any], source: str = MODEL_CONFIG) -> ModelConfig:
    """Inverse of hf_config: read our shape back from a Llama config.json."""
    if raw.get("model_type") != "llama":
        raise RunFormatError(f"{source}: model_type is {raw.get('model_type')!r}, not 'llama'.")
    theta = raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta", 1e4)
    model = ModelConfig(
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        n_kv_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        mlp_hidden=raw["intermediate_size"],
        vocab_size=raw["vocab_size"],
        max_seq_len=raw["max_position_embeddings"],
        rope_theta=float(theta),
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        init_std=raw.get("initializer_range", 0.02),
    )
    validate_model(model, prefix=source)
    return model


def save_model_files(folder: str | Path, model: PicoDecoder, tokenizer=None) -> None:
    """Write config.json, model.safetensors, generation_config.json (+ tokenizer files)."""
    paths = CheckpointPaths(Path(folder))
    paths.root.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    save_file(tensors, str(paths.model_weights), metadata={"format": "pt"})
    ids = special_token_ids(tokenizer)
    write_json_atomic(paths.model_config, hf_config(model.config, **ids))
    generation = {k: v for k, v in ids.items() if v is not None}
    write_json_atomic(paths.generation_config, {**generation, "do_sample": False})
    if tokenizer is not None:
        save_tokenizer(tokenizer, paths.root)


def special_token_ids(tokenizer) -> dict[str, int | None]:
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> PicoDecoder:
    """Build a PicoDecoder from a checkpoint folder (ours or any plain Llama with our shape)."""
    folder = Path(folder)
    paths = CheckpointPaths(folder)
    config_path, weights_path = paths.model_config, paths.model_weights
    for path in (config_path, weights_path):
        if not path.is_file():
            raise RunFormatError(f"'{folder}' is not a model checkpoint: missing {path.name}.")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise RunFormatError(f"Corrupt {config_path}: {err}.") from None
    model = PicoDecoder(model_config_from_hf(raw, str(config_path)))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise RunFormatError(f"Corrupt weights file '{weights_path}': {err}.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunFormatError(
            f"'{weights_path}' does not match config.json: missing {missing}, "
            f"unexpected {unexpected}."
        )
    return model.to(device)


# ----------------------------------------------------------------------------------------------
# Training state
# ----------------------------------------------------------------------------------------------


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]):
    """Flatten optimizer.state_dict() to {f"{param name}/{key}": tensor} + JSON metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{names[index]}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{names[index]}/{key}"] = value
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def save_training_state(
    ckpt: CheckpointPaths,
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
    trainer: dict[str, Any],
) -> None:
    """Write state/: optimizer.safetensors, rng.safetensors and trainer.json.

    `param_names` lists the optimizer's parameters in the order they were given to it.
    `trainer` holds the counters (step, tokens seen, data cursor, scheduler, skipped steps).
    """
    ckpt.state.mkdir(parents=True, exist_ok=True)
    tensors, meta = _optimizer_tensors(optimizer, dict(enumerate(param_names)))
    save_file(tensors, str(ckpt.optimizer))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, str(ckpt.rng))
    write_json_atomic(ckpt.trainer, {**trainer, "optimizer": meta, "rng": rng_meta})


def load_training_state(
    ckpt: CheckpointPaths, optimizer: torch.optim.Optimizer, param_names: list[str]
) -> dict[str, Any]:
    """Restore optimizer and RNG states in place; return the trainer counters."""
    if not ckpt.trainer.is_file():
        raise RunFormatError(
            f"Checkpoint '{ckpt.root}' has no training state (pruned by "
            f"checkpointing.keep_states?); cannot resume from it."
        )
    trainer = read_json(ckpt.trainer)
    try:
        tensors = load_file(str(ckpt.optimizer))
        rng_tensors = load_file(str(ckpt.rng))
    except (SafetensorError, OSError) as err:
        raise RunFormatError(f"Corrupt training state in '{ckpt.state}': {err}.") from None
    meta = trainer.pop("optimizer")
    index = {name: i for i, name in enumerate(param_names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, field = key.rsplit("/", 1)
        state.setdefault(index[name], {})[field] = value
    for key, value in meta["scalars"].items():
        name, field = key.rsplit("/", 1)
        state.setdefault(index[name], {})[field] = value
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    _set_rng_state(rng_tensors, trainer.pop("rng"))
    return trainer


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.uint32).view(np.int32)),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().view(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def model_fingerprint(model: ModelConfig) -> str:
    """Identity of the model shape, to refuse resuming with a different model."""
    return hashlib.sha256(json.dumps(asdict(model), sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Finding checkpoints
# ----------------------------------------------------------------------------------------------


def find_checkpoints(
    path: str | Path, steps: list[int] | str | None = None
) -> list[CheckpointPaths]:
    """Checkpoint folders named by a path and steps.

    `path` is a checkpoint folder or a run directory. steps None: the folder itself, or the run's
    latest checkpoint; a list: those steps of the run (each must exist); "all": every complete
    checkpoint of the run. Raises RunFormatError naming what is missing.
    """
    path = Path(path)
    if CheckpointPaths(path).model_config.is_file():
        ckpt = CheckpointPaths(path)
        if steps is None:
            return [ckpt]
        run_root = path.parent.parent if path.parent.name == CHECKPOINTS else None
        if run_root is None:
            raise RunFormatError(
                f"'{path}' is a single model folder, not a run: it has no steps to choose from."
            )
        path = run_root
    run = RunPaths(path)
    if not run.checkpoints.is_dir():
        raise RunFormatError(f"'{path}' is neither a checkpoint folder nor a run directory.")
    have = list_checkpoints(run)
    if not have:
        raise RunFormatError(f"Run '{path}' has no complete checkpoint yet.")
    if steps is None:
        chosen = [latest_step(run) or have[-1]]
    elif steps == "all":
        chosen = have
    else:
        missing = [s for s in steps if s not in have]
        if missing:
            raise RunFormatError(
                f"Run '{path}' has no checkpoint at step {', '.join(map(str, missing))} "
                f"(it has steps {', '.join(map(str, have))})."
            )
        chosen = list(steps)
    return [run.checkpoint(s) for s in chosen]


def checkpoint_step(ckpt: CheckpointPaths) -> int | None:
    """The training step of a checkpoint folder (None for a model folder outside a run)."""
    try:
        return ckpt.step
    except ValueError:
        return None


def run_of(ckpt: CheckpointPaths) -> RunPaths | None:
    """The run directory holding a checkpoint folder, if it is inside one."""
    root = ckpt.root.parent.parent
    if ckpt.root.parent.name == CHECKPOINTS and RunPaths(root).info.is_file():
        return RunPaths(root)
    return None
