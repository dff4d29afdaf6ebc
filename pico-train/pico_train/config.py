"""Typed configuration: nested dataclasses holding every default once.

Reads a YAML file plus dot-path overrides (``--set training.max_steps=200``) and a model preset;
writes a validated :class:`RunConfig`. Unknown keys and impossible values fail here, before any
work, with a message naming the key and what would fix it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pico_format import (
    CAPTURE_SPLITS,
    DEFAULT_CAPTURE_SUFFIXES,
    POSITION_POLICIES,
    module_name,
    yaml_file,
)
from pico_format.yaml_file import YAMLFileError, did_you_mean


class ConfigError(ValueError):
    """A configuration that cannot run: names the key and the fix."""


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax or encoding error names the file and line (ConfigError)."""
    try:
        return yaml_file.read_yaml(path)
    except YAMLFileError as err:
        raise ConfigError(str(err)) from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; errors become one line: `SOURCE, line N: problem` (ConfigError)."""
    try:
        return yaml_file.parse_yaml(text, source)
    except YAMLFileError as err:
        raise ConfigError(str(err)) from None


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Shape of the pico-decoder (LLaMA-style; see model.py)."""

    d_model: int = 96
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int = 4
    mlp_hidden: int = 384  # SwiGLU hidden width
    vocab_size: int = 50304
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # Initialisation (see model.init_weights): "scaled_normal" or "pytorch_default".
    init: str = "scaled_normal"
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _suite(d: int) -> ModelConfig:
    return ModelConfig(d_model=d, mlp_hidden=4 * d)


def _demo(d: int, layers: int) -> ModelConfig:
    """The demo shape at width `d` and depth `layers` (head_dim d/4, MLP 4d): the sweep family."""
    return ModelConfig(d, layers, 4, 2, 4 * d, vocab_size=4096, max_seq_len=256)


# The CPU-sized scale sweep (`make sweep`): widths and a depth of the demo shape ("demo" is
# d 128 x 4 layers). (name suffix, d_model, n_layers)
SWEEP_SHAPES = (("w32", 32, 4), ("w64", 64, 4), ("w64-l8", 64, 8))

# The pico-decoder suite (12 layers, 12 heads, 4 KV heads, MLP 4d, vocab 50304, context 2048),
# a 1B-class preset (LLaMA-style 8/3*d SwiGLU rounded to 128, Qwen2 vocabulary, untied head:
# 1,457,596,416 parameters), and a CPU-sized demo shape with its sweep family.
PRESETS: dict[str, ModelConfig] = {
    "demo": ModelConfig(
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=512,
        vocab_size=4096,
        max_seq_len=256,
    ),
    **{f"demo-{name}": _demo(d, layers) for name, d, layers in SWEEP_SHAPES},
    "tiny": _suite(96),
    "small": _suite(384),
    "medium": _suite(768),
    "large": _suite(1536),
    "1b": ModelConfig(
        d_model=2048,
        n_layers=18,
        n_heads=16,
        n_kv_heads=8,
        mlp_hidden=5504,
        vocab_size=151936,
        max_seq_len=2048,
        rope_theta=1_000_000.0,
    ),
}

# The tokenizer a preset uses unless data.tokenizer says otherwise (None: a BPE trained on the
# corpus). The 1b preset's 151,936 vocabulary rows hold Qwen2's 151,646 tokens plus padding.
PRESET_TOKENIZERS: dict[str, str] = {"1b": "qwen2"}


@dataclass
class DataConfig:
    """Where tokens come from and in which order (see data.py)."""

    # None: the embedded Shakespeare corpus. Otherwise a Hugging Face dataset name (streamed from
    # the Hub) or local parquet/json/jsonl/arrow files or a folder of them.
    dataset: str | None = None
    dataset_config: str | None = None  # the Hub dataset's configuration name, if it has several
    split: str = "train"
    text_column: str = "text"  # raw-text datasets; pre-tokenized ones have `input_ids`
    # None: train a byte-level BPE on the corpus (cached, saved with the run); "qwen2": the Qwen2
    # tokenizer, converted offline (qwen2_tokenizer.py; the 1b preset's default). Otherwise a Hub
    # tokenizer name or a local tokenizer.json / tokenizer directory.
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 4096  # only for the trained BPE
    seq_len: int | None = None  # None: the model's max_seq_len
    seed: int = 0  # fixes the global order and the held-out set
    eval_sequences: int = 128  # held-out sequences, never trained on (the eval capture batch)
    streaming: bool | None = None  # None: stream Hub datasets, load local files


@dataclass
class TrainingConfig:
    """Optimisation: AdamW, warmup + decay, accumulation to a global batch, clipping."""

    max_steps: int = 1000
    global_batch_size: int = 32  # sequences per optimizer step, independent of device count
    micro_batch_size: int = 8  # sequences per forward/backward on one process
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # never on norms and embeddings
    grad_clip: float = 1.0  # 0 disables clipping
    # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp8 (bf16 with float8 block
    # projections through torchao, float8.py; GPUs of compute capability >= 8.9)
    precision: str = "auto"
    compile: str = "auto"  # auto (compiled on CUDA, eager on CPU) | true | false
    # auto: DDP while model, gradients and optimizer state fit comfortably on one device, FSDP2
    # above (parallelize.choose_parallelism); ddp | fsdp force one. One process: neither.
    parallelism: str = "auto"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    seed: int = 42  # model initialisation and any sampling
    max_bad_steps: int = 5  # non-finite losses in a row before the run stops


@dataclass
class CheckpointConfig:
    every: int = 100  # 0: only explicit steps and the final step
    steps: list[int] = field(default_factory=list)  # e.g. Pythia's 0, 1, 2, 4, ..., 512
    keep_states: int = 2  # training states kept; model files of every checkpoint are kept


@dataclass
class EvalConfig:
    enabled: bool = True
    batch_size: int = 16


@dataclass
class CaptureConfig:
    """Learning-dynamics capture at every checkpoint (see capture.py)."""

    enabled: bool = True
    splits: list[str] = field(default_factory=lambda: list(CAPTURE_SPLITS))
    # fnmatch patterns over module names; default: value, output and MLP down projections.
    modules: list[str] = field(
        default_factory=lambda: [module_name("*", s) for s in DEFAULT_CAPTURE_SUFFIXES]
    )
    residual: bool = False  # also the residual stream after each block
    positions: str = "last"  # last | all | sample | mean
    n_positions: int = 8  # for positions=sample
    batch_size: int = 128  # sequences captured per split
    micro_batch_size: int = 16
    activation_dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16


@dataclass
class LoggingConfig:
    progress: bool = True
    log_every: int = 1
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "pico"


@dataclass
class DistributedConfig:
    """Several processes (torchrun): how long any collective may wait for the others."""

    # A rank blocked longer than this in a collective (its peers failed or hang) raises and
    # stops; torchrun also stops every rank as soon as one exits with an error.
    timeout_s: int = 300


@dataclass
class RunConfig:
    # None: runs/<config file name>, else runs/<preset>, else runs/run (see load_config).
    run_dir: str | None = None
    preset: str | None = None  # a key of PRESETS: the base shape that `model` overrides
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def seq_len(self) -> int:
        return self.model.max_seq_len if self.data.seq_len is None else self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------
# Building from YAML and overrides
# ----------------------------------------------------------------------------------------------


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or fail naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}.")
        item_hints = args if origin is tuple else (args[0],) * len(value)
        if origin is tuple and len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)!r}.")
        out = [_coerce(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, item_hints))]
        return tuple(out) if origin is tuple else out
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true or false, got {value!r}.")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}.")
        try:
            number = float(value) if hint is float else value
            if hint is int:
                number = int(value) if isinstance(value, str) else value
                if isinstance(number, float):
                    if not number.is_integer():
                        raise ValueError
                    number = int(number)
                if not isinstance(number, int):
                    raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}.") from None
        if hint is float and not math.isfinite(number):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}.")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], path: str, base: Any = None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = dataclasses.replace(base) if base is not None else cls()
    for key, value in raw.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            close = did_you_mean(key, names, f"{path}." if path else "")
            raise ConfigError(f"Unknown config key '{full}'.{close}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value or {}, full, getattr(obj, key))
        else:
            value = _coerce(value, hint, full)
        setattr(obj, key, value)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(
            f"Override '{text}' must look like section.key=value (with '=', no spaces)."
        )
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"Override '{text}': '{key}' is not a dot-path key like training.lr.")
    return keys, parse_yaml(value, f"--set {text}") if value.strip() else None


def print_note(message: str) -> None:
    """Print a note about an adjusted config on stderr (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {message}", file=sys.stderr, flush=True)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
    *,
    note: Callable[[str], None] | None = print_note,
) -> RunConfig:
    """YAML file (optional) + dot-path overrides + preset -> validated RunConfig.

    Harmless adjustments (explicit checkpoint steps past the end, dropped) and doubtful choices
    (an embedding table much larger than the tokenizer) are reported through `note`.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist.")
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Config file '{path}' must hold a mapping of sections.")
        raw = loaded or {}
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override '{text}': '{k}' is not a section.")
        node[keys[-1]] = value
    if preset is not None:
        raw["preset"] = preset
    name = raw.get("preset")
    base = RunConfig()
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset '{name}'.{did_you_mean(str(name), list(PRESETS))}")
        base.model = dataclasses.replace(PRESETS[name])
        base.data = dataclasses.replace(base.data, tokenizer=PRESET_TOKENIZERS.get(name))
    config = _build(RunConfig, raw, "", base)
    if config.run_dir is None:
        name = Path(path).stem if path is not None else config.preset or "run"
        config.run_dir = f"runs/{name}"
    notes = _adjust(config)
    validate(config)
    for message in notes + _doubts(config):
        if note is not None:
            note(message)
    return config


def _adjust(config: RunConfig) -> list[str]:
    """Drop explicit checkpoint steps past the end of the run; say so."""
    checkpointing, max_steps = config.checkpointing, config.training.max_steps
    late = [step for step in checkpointing.steps if step > max_steps]
    if not late:
        return []
    checkpointing.steps = [step for step in checkpointing.steps if step <= max_steps]
    return [
        f"checkpointing.steps {late} lie beyond training.max_steps={max_steps}; "
        f"dropped (the final step is always saved)."
    ]


def _doubts(config: RunConfig) -> list[str]:
    """Valid but probably unintended settings."""
    out = []
    vocab, tokens = config.model.vocab_size, config.data.tokenizer_vocab_size
    if config.data.tokenizer is None and vocab > 2 * tokens:
        fit = -(-tokens // 64) * 64
        out.append(
            f"model.vocab_size={vocab} but the trained tokenizer has {tokens} tokens: "
            f"{vocab - tokens} embedding rows are never used and the first loss is about "
            f"ln({vocab})={math.log(vocab):.1f}. --set model.vocab_size={fit} sizes the model "
            f"to the tokenizer."
        )
    return out


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Rebuild a resolved config (as written in a run directory)."""
    config = _build(RunConfig, raw, "")
    validate(config)
    return config


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


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
        training.compile in ("auto", "true", "false"),
        "training.compile",
        f"'{training.compile}' is not one of auto, true, false.",
    )
    _require(
        training.parallelism in ("auto", "ddp", "fsdp"),
        "training.parallelism",
        f"'{training.parallelism}' is not one of auto, ddp, fsdp.",
    )
    _require(training.max_bad_steps > 0, "training.max_bad_steps", "must be positive.")


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


def checkpoint_steps(config: RunConfig) -> set[int]:
    """Steps (counted in completed optimizer steps) at which a checkpoint is written."""
    every, max_steps = config.checkpointing.every, config.training.max_steps
    steps = set(config.checkpointing.steps) | {max_steps}
    if every:
        steps |= set(range(every, max_steps + 1, every))
    return steps
