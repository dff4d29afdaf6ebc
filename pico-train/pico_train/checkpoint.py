"""Checkpoint writer and reader: model files that transformers loads, and the training state.

Writes, into a checkpoint folder opened by `pico_format.checkpoint_transaction`:
- the Hugging Face files: ``config.json`` (model_type llama), ``model.safetensors``,
  ``generation_config.json`` and the tokenizer files, so
  ``AutoModelForCausalLM.from_pretrained(folder)`` works with no custom code;
- ``state/``: optimizer moments keyed by parameter name, RNG states and the trainer's counters,
  in safetensors + JSON (nothing pickled), for an exact resume.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
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
    latest_step,
    list_checkpoints,
    read_json,
    write_json_atomic,
)
from pico_format.layout import CHECKPOINTS
from pico_train import __version__
from pico_train.config import ModelConfig, validate_model
from pico_train.model import PicoDecoder

# ----------------------------------------------------------------------------------------------
# Hugging Face model files
# ----------------------------------------------------------------------------------------------


def hf_config(
    c: ModelConfig,
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
        "hidden_size": c.d_model,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": c.init_std,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
        "dtype": "float32",
        "pico_version": __version__,
    }


def model_config_from_hf(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Inverse of hf_config: read our shape back from a Llama config.json."""
    if raw.get("model_type") != "llama":
        raise RunFormatError(f"{source}: model_type is {raw.get('model_type')!r}, not 'llama'.")
    theta = raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta", 1e4)
    c = ModelConfig(
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
    validate_model(c, prefix=source)
    return c


def save_model_files(
    folder: Path,
    model: PicoDecoder,
    tokenizer=None,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write config.json, model.safetensors, generation_config.json (+ tokenizer files).

    `state_dict` lets a distributed caller pass the gathered full weights.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    ids = special_token_ids(tokenizer)
    write_json_atomic(folder / "config.json", hf_config(model.config, **ids))
    generation = {k: v for k, v in ids.items() if v is not None}
    write_json_atomic(folder / "generation_config.json", {**generation, "do_sample": False})
    if tokenizer is not None:
        save_tokenizer_files(tokenizer, folder)


# transformers 4.x knows no "TokenizersBackend" (5.x's name for a plain fast tokenizer) and reads
# "extra_special_tokens" as a dict; 5.x loads the 4.x spelling of both.
_PORTABLE_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def save_tokenizer_files(tokenizer, folder: str | Path) -> None:
    """save_pretrained, then rewrite tokenizer_config.json so transformers 4.x and 5.x load it:
    the class PreTrainedTokenizerFast, additional special tokens as a list."""
    tokenizer.save_pretrained(str(folder))
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    cls = config.get("tokenizer_class")
    config["tokenizer_class"] = _PORTABLE_CLASS.get(cls, cls)
    if config.get("backend") == "tokenizers":
        del config["backend"]
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        config["additional_special_tokens"] = extra
    write_json_atomic(path, config)


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
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
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


def model_fingerprint(c: ModelConfig) -> str:
    """Identity of the model shape, to refuse resuming with a different model."""
    return hashlib.sha256(json.dumps(asdict(c), sort_keys=True).encode()).hexdigest()[:16]


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
    if (path / "config.json").is_file():
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
