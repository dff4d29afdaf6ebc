"""Refusing a configuration that cannot run, before any work: each check names the key and the fix.

Read by loading.py (load_config validates what it builds) and by pico-train's sweep and
checkpoint readers (validate_model).
"""

from __future__ import annotations

from pico_format import (
    CAPTURE_SPLITS,
    POSITION_POLICIES,
)
from pico_train.config.sections import (
    CaptureConfig,
    CheckpointConfig,
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainingConfig,
)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate_model(model: ModelConfig, prefix: str = "model") -> None:
    for name in (
        "d_model",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "mlp_hidden",
        "vocab_size",
        "max_seq_len",
    ):
        value = getattr(model, name)
        _require(value > 0, f"{prefix}.{name}", f"must be a positive integer, got {value}.")
    _require(
        model.d_model % model.n_heads == 0,
        f"{prefix}.d_model",
        f"{model.d_model} is not divisible by n_heads={model.n_heads}; choose d_model a multiple "
        f"of n_heads (e.g. {model.n_heads * max(1, round(model.d_model / model.n_heads))}).",
    )
    _require(
        model.head_dim % 2 == 0,
        f"{prefix}.d_model",
        f"head_dim = d_model/n_heads = {model.head_dim} must be even for rotary embeddings.",
    )
    _require(
        model.n_heads % model.n_kv_heads == 0,
        f"{prefix}.n_kv_heads",
        f"n_heads={model.n_heads} is not divisible by n_kv_heads={model.n_kv_heads}; use a divisor "
        f"of n_heads.",
    )
    _require(model.rope_theta > 0, f"{prefix}.rope_theta", "must be positive.")
    _require(model.norm_eps > 0, f"{prefix}.norm_eps", "must be positive.")
    _require(
        model.init in ("scaled_normal", "pytorch_default"),
        f"{prefix}.init",
        f"'{model.init}' is not one of scaled_normal, pytorch_default.",
    )
    _require(model.init_std > 0, f"{prefix}.init_std", "must be positive.")


def validate(config: RunConfig) -> None:
    """Refuse a config that cannot run, naming the key and the fix (ConfigError)."""
    validate_model(config.model)
    _validate_data(config)
    _validate_training(config.training)
    _validate_recompute(config.training.activation_checkpointing, config.model.n_layers)
    if config.training.precision == "fp8":
        _validate_float8_shape(config.model)
    _validate_checkpointing(config.checkpointing, config.training.max_steps)
    _require(config.evaluation.batch_size > 0, "evaluation.batch_size", "must be positive.")
    _validate_capture(config.capture)
    _require(config.logging.log_every > 0, "logging.log_every", "must be positive.")
    _require(
        config.distributed.timeout_s > 0, "distributed.timeout_s", "must be a positive number."
    )


def _validate_float8_shape(model: ModelConfig) -> None:
    """Float8 matrix multiplies need every projection width to be a multiple of 16."""
    widths = {
        "model.d_model": model.d_model,
        "model.mlp_hidden": model.mlp_hidden,
        "model.n_kv_heads x head_dim": model.n_kv_heads * model.head_dim,
    }
    bad = [f"{name}={value}" for name, value in widths.items() if value % 16]
    _require(
        not bad,
        "training.precision",
        f"fp8 needs projection widths that are multiples of 16; {', '.join(bad)} is not.",
    )


def _validate_data(config: RunConfig) -> None:
    data, model = config.data, config.model
    _require(config.seq_len > 0, "data.seq_len", "must be positive.")
    _require(
        config.seq_len <= model.max_seq_len,
        "data.seq_len",
        f"{config.seq_len} exceeds model.max_seq_len={model.max_seq_len}.",
    )
    _require(
        data.tokenizer_vocab_size >= 260,
        "data.tokenizer_vocab_size",
        "must be at least 260 (256 bytes plus special tokens).",
    )
    _require(
        data.tokenizer is not None or data.tokenizer_vocab_size <= model.vocab_size,
        "data.tokenizer_vocab_size",
        f"{data.tokenizer_vocab_size} exceeds model.vocab_size={model.vocab_size}.",
    )
    _require(data.eval_sequences > 0, "data.eval_sequences", "must be positive.")


def _validate_training(training: TrainingConfig) -> None:
    for name in ("max_steps", "global_batch_size", "micro_batch_size"):
        _require(getattr(training, name) > 0, f"training.{name}", "must be a positive integer.")
    _require(
        training.global_batch_size % training.micro_batch_size == 0,
        "training.global_batch_size",
        f"{training.global_batch_size} is not a multiple of training.micro_batch_size="
        f"{training.micro_batch_size}.",
    )
    _require(training.lr > 0, "training.lr", "must be positive.")
    _require(0 <= training.min_lr_ratio <= 1, "training.min_lr_ratio", "must lie in [0, 1].")
    _require(training.warmup_steps >= 0, "training.warmup_steps", "must be 0 or positive.")
    _require(
        training.warmup_steps <= training.max_steps,
        "training.warmup_steps",
        f"{training.warmup_steps} is longer than the run (training.max_steps="
        f"{training.max_steps}); add --set training.warmup_steps={training.max_steps // 10} "
        f"(a tenth of the run) or raise training.max_steps.",
    )
    _require(
        training.schedule in ("cosine", "linear", "constant"),
        "training.schedule",
        f"'{training.schedule}' is not one of cosine, linear, constant.",
    )
    _require(
        all(0 <= beta < 1 for beta in training.betas),
        "training.betas",
        "each beta must lie in [0, 1).",
    )
    _require(
        training.eps > 0 and training.weight_decay >= 0 and training.grad_clip >= 0,
        "training",
        "eps must be positive; weight_decay and grad_clip non-negative.",
    )
    _require(
        training.precision in ("auto", "fp32", "bf16", "fp8"),
        "training.precision",
        f"'{training.precision}' is not one of auto, fp32, bf16, fp8.",
    )
    training.compile = str(training.compile).lower()
    _require(
        training.compile in ("auto", "true", "false", "cudagraphs"),
        "training.compile",
        f"'{training.compile}' is not one of auto, true, false, cudagraphs.",
    )
    _require(
        training.parallelism in ("auto", "ddp", "fsdp"),
        "training.parallelism",
        f"'{training.parallelism}' is not one of auto, ddp, fsdp.",
    )
    _require(training.max_bad_steps > 0, "training.max_bad_steps", "must be positive.")


def _validate_recompute(blocks: bool | int, n_layers: int) -> None:
    """training.activation_checkpointing: true, false, or a number of blocks the model has."""
    if isinstance(blocks, bool):
        return
    _require(
        0 <= blocks <= n_layers,
        "training.activation_checkpointing",
        f"{blocks} blocks: give true (every block), false, or a number of blocks from 0 to "
        f"model.n_layers={n_layers}.",
    )


def _validate_checkpointing(checkpointing: CheckpointConfig, max_steps: int) -> None:
    _require(checkpointing.every >= 0, "checkpointing.every", "must be 0 (off) or positive.")
    _require(
        all(0 <= step <= max_steps for step in checkpointing.steps),
        "checkpointing.steps",
        f"every step must lie in [0, max_steps={max_steps}], got {checkpointing.steps}.",
    )
    _require(checkpointing.keep_states >= 1, "checkpointing.keep_states", "must be at least 1.")


def _validate_capture(capture: CaptureConfig) -> None:
    _require(
        set(capture.splits) <= set(CAPTURE_SPLITS),
        "capture.splits",
        f"{capture.splits} may hold only {' and '.join(repr(s) for s in CAPTURE_SPLITS)}.",
    )
    _require(
        capture.positions in POSITION_POLICIES,
        "capture.positions",
        f"'{capture.positions}' is not one of {', '.join(POSITION_POLICIES)}.",
    )
    _require(
        capture.batch_size > 0 and capture.micro_batch_size > 0 and capture.n_positions > 0,
        "capture",
        "batch_size, micro_batch_size and n_positions must be positive.",
    )
    _require(
        capture.activation_dtype in ("auto", "fp32", "bf16"),
        "capture.activation_dtype",
        f"'{capture.activation_dtype}' is not one of auto, fp32, bf16.",
    )
