"""The configuration's sections: nested dataclasses holding every default once, and the presets.

Read by loading.py (which builds a RunConfig from YAML and overrides) and validation.py (which
refuses what cannot run); everything else imports these types from `pico_train.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pico_format import (
    CAPTURE_SPLITS,
    DEFAULT_CAPTURE_SUFFIXES,
    module_name,
)


class ConfigError(ValueError):
    """A configuration that cannot run: names the key and the fix."""


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
    "demo": _demo(128, 4),
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
    # auto (compiled on CUDA, eager on CPU) | true | false | cudagraphs (compiled, each
    # micro-batch replayed as CUDA graphs; one CUDA process only; parallelize.compile_mode)
    compile: str = "auto"
    # auto: DDP while model, gradients and optimizer state fit comfortably on one device, FSDP2
    # above (parallelize.choose_parallelism); ddp | fsdp force one. One process: neither.
    parallelism: str = "auto"
    # Recompute blocks' activations in backward instead of keeping them: true (every block),
    # false, or a number N (the first N blocks), trading speed for memory (parallelize.py).
    activation_checkpointing: bool | int = False
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


# Building from YAML and overrides


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def checkpoint_steps(config: RunConfig) -> set[int]:
    """Steps (counted in completed optimizer steps) at which a checkpoint is written."""
    every, max_steps = config.checkpointing.every, config.training.max_steps
    steps = set(config.checkpointing.steps) | {max_steps}
    if every:
        steps |= set(range(every, max_steps + 1, every))
    return steps
