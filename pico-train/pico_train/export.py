"""Export: a checkpoint -> a release folder (safetensors in one dtype, tokenizer, GGUF, model card).

Reads one checkpoint folder (a run's step, or its latest); writes ``--out DIR``:

    config.json  generation_config.json         the transformers Llama config, in the dtype
    model.safetensors                           or model-00001-of-0000N.safetensors + index
                                                (model.safetensors.index.json) above 5 GB
    tokenizer.json  tokenizer_config.json       loadable by transformers 4.x and 5.x
    <name>-<type>.gguf                          with --gguf f16|q8_0 (gguf_export.py)
    README.md                                   the model card (model_card.py)

Everything is checked first (step, dtype, GGUF type, output folder, what llama.cpp can
represent), then written into a temporary sibling folder that is renamed to ``DIR`` when
complete, so a failure leaves nothing half-written and an existing ``DIR`` (with --force) is
replaced only by a complete export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from pico_format import CheckpointPaths, RunFormatError, folder_transaction, write_json_atomic
from pico_format.layout import GENERATION_CONFIG, MODEL_CONFIG, MODEL_WEIGHTS
from pico_train.checkpoint import (
    checkpoint_step,
    find_checkpoints,
    hf_config,
    load_model,
    run_of,
    special_token_ids,
)
from pico_train.gguf_export import GGUF_TYPES, GGUFExportError, check_gguf_exportable, write_gguf
from pico_train.model_card import render_model_card
from pico_train.tokenizer import save_tokenizer

__all__ = ["DTYPES", "ExportError", "ExportResult", "export_checkpoint"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
MAX_SHARD_SIZE = "5GB"  # transformers' and the Hub's shard size for safetensors
WEIGHTS_NAME = MODEL_WEIGHTS
INDEX_NAME = "model.safetensors.index.json"


class ExportError(ValueError):
    """An export that cannot be done as asked (one line for the CLI)."""


@dataclass
class ExportResult:
    out: Path
    step: int | None
    dtype: str
    files: list[str] = field(default_factory=list)
    gguf: Path | None = None


def _load_tokenizer(ckpt: CheckpointPaths):
    if not ckpt.tokenizer.is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt.root))


def _write_weights(folder: Path, state: dict[str, torch.Tensor], max_shard_size) -> list[str]:
    """One model.safetensors, or shards + an index when above max_shard_size (as transformers)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(folder / filename), metadata={"format": "pt"})
    files = list(split.filename_to_tensors)
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": split.tensor_to_filename}
        write_json_atomic(folder / INDEX_NAME, index)
        files.append(INDEX_NAME)
    return files


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out '{out}' exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out '{out}' is not empty; choose an empty folder or pass --force.")


def export_checkpoint(
    source: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    dtype: str = "fp16",
    gguf: str | None = None,
    force: bool = False,
    max_shard_size: int | str = MAX_SHARD_SIZE,
    progress: bool = False,
    log=lambda message: None,
) -> ExportResult:
    """Export checkpoint `source` (a checkpoint folder or a run; `step` picks one) to `out`.

    `log` receives one line per stage; `progress` shows the GGUF writer's progress bar."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{dtype}'; choose one of {list(DTYPES)}.")
    if gguf is not None and gguf not in GGUF_TYPES:
        raise ExportError(f"unknown GGUF type '{gguf}'; choose one of {list(GGUF_TYPES)}.")
    out = Path(out)
    try:
        ckpt = find_checkpoints(source, None if step is None else [step])[0]
        _check_out(out, force)
        log(f"loading {ckpt.root}")
        model = load_model(ckpt.root)
        tokenizer = _load_tokenizer(ckpt)
        if gguf is not None:
            check_gguf_exportable(model.config, tokenizer, gguf)
    except (RunFormatError, GGUFExportError) as err:
        raise ExportError(str(err)) from None
    run = run_of(ckpt)
    result = ExportResult(out=out, step=checkpoint_step(ckpt), dtype=dtype)
    with folder_transaction(out) as tmp:
        gguf_name = _write_export(
            tmp,
            ckpt,
            run,
            model,
            tokenizer,
            result,
            gguf=gguf,
            max_shard_size=max_shard_size,
            progress=progress,
            log=log,
        )
    result.gguf = out / gguf_name if gguf_name else None
    return result


def _write_export(
    tmp, ckpt, run, model, tokenizer, result, *, gguf, max_shard_size, progress, log
) -> str | None:
    """Fill the export folder `tmp`; record its files in `result`; return the GGUF's name."""
    shape, dtype, step = model.config, result.dtype, result.step
    name = run.root.name if run is not None else ckpt.root.name
    ids = special_token_ids(tokenizer)
    config = hf_config(shape, **ids)
    config["torch_dtype"] = config["dtype"] = _DTYPE_NAMES[dtype]
    folder = CheckpointPaths(tmp)  # an export is a model folder: the same file names
    write_json_atomic(folder.model_config, config)
    generation = {k: v for k, v in ids.items() if v is not None}
    write_json_atomic(folder.generation_config, {**generation, "do_sample": False})
    result.files = [MODEL_CONFIG, GENERATION_CONFIG]
    log(f"writing {dtype} safetensors")
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    result.files += _write_weights(tmp, state, max_shard_size)
    del state
    if tokenizer is not None:
        save_tokenizer(tokenizer, tmp)
        result.files += sorted(p.name for p in tmp.glob("tokenizer*") if p.is_file())
    gguf_name = None
    if gguf is not None:
        gguf_name = f"{name}{'' if step is None else f'-step{step}'}-{gguf}.gguf"
        log(f"writing {gguf_name}")
        full = {k: v.detach() for k, v in model.state_dict().items()}
        write_gguf(tmp / gguf_name, full, shape, tokenizer, gguf, name=name, progress=progress)
        result.files.append(gguf_name)
    card = render_model_card(
        ckpt,
        run,
        dtype=dtype,
        files=result.files,
        gguf_file=gguf_name,
        tokenizer_size=None if tokenizer is None else len(tokenizer),
    )
    (tmp / "README.md").write_text(card)
    result.files.append("README.md")
    return gguf_name


def weights_files(folder: str | Path) -> list[str]:
    """The safetensors files of an export: one file, or the shards its index names."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [WEIGHTS_NAME]
