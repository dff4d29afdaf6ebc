"""The run directory: every file name pico-train writes and pico-analyze reads, defined once.

RUN/
  run.json                 RunInfo: schema version, code version, data fingerprint, identity
  config.yaml              the resolved training config
  log.jsonl                one JSON object per logged step (loss, lr, grad norm, tokens/s...)
  latest.json              pointer to the newest complete checkpoint
  .lock                    held (flock) by the one trainer writing the run
  tensorboard/             TensorBoard event files (logging.tensorboard)
  analysis/                pico-analyze's results table, plots and report for this run
  checkpoints/
    step_00000100/         one complete checkpoint (written as .tmp-step_00000100, renamed)
      config.json  model.safetensors  generation_config.json  tokenizer.json ...
                           the Hugging Face model files: AutoModelForCausalLM loads this folder
      eval.json            held-out loss and perplexity
      benchmarks.json      `pico-train eval` results (lm-eval harness), see pico_format.benchmarks
      state/               training state for exact resume (pruned to the last K)
        optimizer.safetensors  rng.safetensors  trainer.json
      capture/<split>/     learning dynamics for split train | eval
        activations.safetensors  gradients.safetensors  (weights: read from model.safetensors)
        manifest.json  text.json
      checkpoint.json      written last: what this checkpoint holds

Module names inside the files (``model.layers.3.self_attn.v_proj``) are defined in
:mod:`pico_format.modules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

RUN_INFO = "run.json"
CONFIG = "config.yaml"
LOG = "log.jsonl"
LATEST = "latest.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
ANALYSIS = "analysis"
TMP_PREFIX = ".tmp-"
LOCK = ".lock"  # held (flock) by the one trainer writing the run

# Inside a checkpoint
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"  # the fast tokenizer; save_pretrained writes its companions beside
EVAL = "eval.json"
BENCHMARKS = "benchmarks.json"
CHECKPOINT_MANIFEST = "checkpoint.json"
STATE = "state"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"
TRAINER = "trainer.json"
CAPTURE = "capture"
CAPTURE_MANIFEST = "manifest.json"
CAPTURE_TEXT = "text.json"
CAPTURE_KINDS = ("activations", "weights", "gradients")
TRAIN_SPLIT = "train"  # the batch the checkpoint's last optimizer step trained on
EVAL_SPLIT = "eval"  # the fixed held-out batch, identical at every step and across runs
CAPTURE_SPLITS = (TRAIN_SPLIT, EVAL_SPLIT)
# Which token positions of a captured sequence become activation rows.
POSITION_POLICIES = ("last", "all", "sample", "mean")

_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def parse_step_dirname(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class CheckpointPaths:
    """Paths inside one checkpoint folder."""

    root: Path

    @property
    def step(self) -> int:
        step = parse_step_dirname(self.root.name.removeprefix(TMP_PREFIX))
        if step is None:
            raise ValueError(f"'{self.root}' is not a checkpoint folder name.")
        return step

    @property
    def model_config(self) -> Path:
        return self.root / MODEL_CONFIG

    @property
    def model_weights(self) -> Path:
        return self.root / MODEL_WEIGHTS

    @property
    def generation_config(self) -> Path:
        return self.root / GENERATION_CONFIG

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER

    @property
    def eval(self) -> Path:
        return self.root / EVAL

    @property
    def benchmarks(self) -> Path:
        return self.root / BENCHMARKS

    @property
    def manifest(self) -> Path:
        return self.root / CHECKPOINT_MANIFEST

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def optimizer(self) -> Path:
        return self.state / OPTIMIZER

    @property
    def rng(self) -> Path:
        return self.state / RNG

    @property
    def trainer(self) -> Path:
        return self.state / TRAINER

    def capture_dir(self, split: str) -> Path:
        return self.root / CAPTURE / split

    def capture_file(self, split: str, kind: str) -> Path:
        if kind not in CAPTURE_KINDS:
            raise ValueError(f"Unknown capture kind '{kind}'; expected one of {CAPTURE_KINDS}.")
        return self.capture_dir(split) / f"{kind}.safetensors"

    def capture_manifest(self, split: str) -> Path:
        return self.capture_dir(split) / CAPTURE_MANIFEST

    def capture_text(self, split: str) -> Path:
        return self.capture_dir(split) / CAPTURE_TEXT


@dataclass(frozen=True)
class RunPaths:
    """Paths at the root of one run."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def info(self) -> Path:
        return self.root / RUN_INFO

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def log(self) -> Path:
        return self.root / LOG

    @property
    def latest(self) -> Path:
        return self.root / LATEST

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def analysis(self) -> Path:
        return self.root / ANALYSIS

    def checkpoint(self, step: int) -> CheckpointPaths:
        return CheckpointPaths(self.checkpoints / step_dirname(step))

    def temporary_checkpoint(self, step: int) -> CheckpointPaths:
        return CheckpointPaths(self.checkpoints / (TMP_PREFIX + step_dirname(step)))
