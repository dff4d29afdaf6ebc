"""The training loop.

Reads a RunConfig; writes a run directory (pico_format): config, run identity, the JSON-lines
log and checkpoints with model files, training state, held-out evaluation and learning-dynamics
captures. The loop is: fetch the step's global batch, forward/backward over micro-batches, clip,
step, and "if due: evaluate, capture, save". Everything else lives in its own module.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pico_format import EVAL_SPLIT, TRAIN_SPLIT, RunFormatError, RunPaths, latest_step
from pico_train import distributed, loss
from pico_train.capture import check_capture_modules
from pico_train.checkpoint import CheckpointContents, load_training_state, write_checkpoint
from pico_train.config import ConfigError, RunConfig, checkpoint_steps
from pico_train.data import DataError, build_data
from pico_train.evaluate import heldout_loss
from pico_train.float8 import float8_problem
from pico_train.lock import RunLock
from pico_train.model import PicoDecoder
from pico_train.monitor import Monitor, check_integrations, truncate_log
from pico_train.optim import build_optimizer, lr_at
from pico_train.parallelize import (
    activation_checkpointing_paused,
    full_model,
    optimizer_for_checkpoint,
    parallelize,
)
from pico_train.resume import RunPlan, check_run, prepare_run


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""


# Raised alike on every rank (the config, run directory, data or loss all ranks share): under
# torchrun only rank 0 prints them.
ERRORS_ON_EVERY_RANK = (ConfigError, RunFormatError, DataError, TrainingError)


@dataclass
class Counters:
    """Everything besides tensors that an exact resume needs (saved in state/trainer.json)."""

    step: int = 0  # optimizer steps taken (= global batches consumed)
    tokens_seen: int = 0
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    bad_in_row: int = 0


@dataclass
class TrainResult:
    run_dir: str
    steps: int  # the step reached
    start_step: int = 0  # where this invocation began (the resumed checkpoint's step)
    first_loss: float | None = None
    last_loss: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)
    seconds: float = 0.0


def autocast_for(config: RunConfig, device: torch.device):
    """bf16 autocast on CUDA (or when asked for, and under fp8), plain fp32 otherwise."""
    precision = config.training.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision in ("bf16", "fp8"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _open_run_on_main(
    run: RunPaths,
    config: RunConfig,
    fingerprint: str,
    force: bool,
    dist: distributed.Dist,
    lock: RunLock | None,
) -> RunPlan:
    """Rank 0 locks the run and decides how to open it; every rank learns the plan (or the
    error). Nothing is written here."""
    outcome: tuple[str, Any] = ("ok", None)
    if dist.is_main:
        try:
            lock.acquire()
            outcome = ("ok", check_run(run, config, fingerprint, force=force))
        except Exception as err:  # re-raised on every rank below
            outcome = ("error", str(err))
    outcome = dist.broadcast_object(outcome)
    if outcome[0] == "error":
        raise TrainingError(outcome[1])
    return outcome[1]


class Trainer:
    def __init__(self, config: RunConfig, *, force: bool = False, device: str | None = None):
        self.config = config
        check_integrations(config.logging)  # before anything is created
        check_capture_modules(config)
        self.dist = distributed.setup(device, config.distributed.timeout_s)
        self.run = RunPaths(config.run_dir)
        self.lock = RunLock(self.run.root) if self.dist.is_main else None
        seed_everything(config.training.seed)
        self.data = build_data(config)
        self.tokenizer = self.data.tokenizer
        try:
            self._open(force)
        except BaseException:
            self.close()
            raise

    def _open(self, force: bool) -> None:
        """Lock, decide, read the resume state, and only then write the run's files."""
        config = self.config
        plan = _open_run_on_main(
            self.run, config, self.data.fingerprint, force, self.dist, self.lock
        )
        resume_step = plan.resume_step
        self.autocast = autocast_for(config, self.dist.device)
        if config.training.precision == "fp8" and (problem := float8_problem(self.dist.device)):
            raise TrainingError(problem)
        model = PicoDecoder(config.model).to(self.dist.device)
        if resume_step is not None:  # full weights, before any wrapping or sharding
            self._load_weights(model, resume_step)
        bf16 = self.autocast is not nullcontext
        self.parallel = parallelize(model, config, self.dist, bf16=bf16)
        self.model = self.parallel.model
        loss.set_implementation("auto", compile_chunks=self.parallel.compiled)
        self.optimizer, self.param_names = build_optimizer(self.model, config.training)
        self.counters = Counters()
        self.resumed_from = resume_step
        if resume_step is not None:
            self._restore_state(resume_step)
        if self.dist.is_main:
            for line in plan.skipped:
                print(f"warning: {line}; not resumed from it.", flush=True)
            if resume_step is not None:
                forced = f" (forced: {'; '.join(plan.changes)})" if plan.changes else ""
                print(f"resuming from step {resume_step} of {self.run.root}{forced}", flush=True)
            hardware = distributed.describe_hardware(self.dist)
            prepare_run(self.run, config, self.data.fingerprint, plan, hardware)
            # drop what a killed run logged after its last checkpoint
            truncate_log(self.run.log, resume_step if resume_step is not None else -1)
        self.save_steps = checkpoint_steps(config)
        self._compile_pending = self.parallel.compiled

    def close(self) -> None:
        """Release the run directory (also after an error)."""
        if self.lock is not None:
            self.lock.release()

    def _load_weights(self, model: PicoDecoder, step: int) -> None:
        weights = self.run.checkpoint(step).model_weights
        try:
            model.load_state_dict(load_file(str(weights), device=str(self.dist.device)))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise RunFormatError(f"Cannot resume from '{weights}': {err}") from None

    def _restore_state(self, step: int) -> None:
        """Optimizer, RNG and counters (the optimizer's full-state view under FSDP)."""
        optimizer = optimizer_for_checkpoint(self.parallel, self.optimizer, self.param_names)
        trainer = load_training_state(self.run.checkpoint(step), optimizer, self.param_names)
        self.counters = Counters(**trainer["counters"])

    # ------------------------------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over micro-batches of this rank's rows, then clip and step.

        batch: (b, T+1) token ids. Returns the step's mean loss and gradient norm as device
        tensors (no host sync here); the caller checks them once per step.
        """
        training = self.config.training
        micro = batch.split(training.micro_batch_size)
        loss_sum = torch.zeros((), device=self.dist.device)
        for i, chunk in enumerate(micro):
            chunk = chunk.to(self.dist.device, non_blocking=True)
            self.parallel.begin_micro_batch()  # CUDA graphs: a new replay
            # DDP and FSDP reduce gradients over ranks on the last micro-batch only.
            with self.parallel.grad_sync(last=i == len(micro) - 1):
                with self.autocast():
                    loss = self.parallel.forward(chunk[:, :-1], chunk[:, 1:]) / len(micro)
                loss.backward()
            loss_sum += loss.detach()
        max_norm = training.grad_clip if training.grad_clip > 0 else math.inf
        grad_norm = self.parallel.clip_grad_norm(max_norm)
        return self.dist.sum(loss_sum) / self.dist.world_size, grad_norm

    def fit(self) -> TrainResult:
        """Train from the current step to training.max_steps, checkpointing when due."""
        training, counters = self.config.training, self.counters
        monitor = Monitor(self.config, self.run, counters.step, enabled=self.dist.is_main)
        result = TrainResult(
            run_dir=str(self.run.root), steps=training.max_steps, start_step=counters.step
        )
        began = time.perf_counter()
        try:
            if counters.step == 0 and self.resumed_from is None and 0 in self.save_steps:
                self.save(0, monitor, result, train_batch=self._batch(0))
            while counters.step < training.max_steps:
                batch = self._batch(counters.step)
                self.optimizer_step(batch, monitor, result)
                if counters.step in self.save_steps:
                    self.save(counters.step, monitor, result, train_batch=batch)
        finally:
            monitor.close()
        result.seconds = time.perf_counter() - began
        return result

    def optimizer_step(self, batch: torch.Tensor, monitor: Monitor, result: TrainResult) -> None:
        """Set the step's lr, train on `batch`, step (or skip a non-finite step), and log."""
        training, counters = self.config.training, self.counters
        lr = lr_at(counters.step, training)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        tick = time.perf_counter()
        loss, grad_norm = self.train_step(batch)
        loss_value, norm_value = loss.item(), grad_norm.item()  # one sync per step
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.optimizer.step()
            counters.bad_in_row = 0
        else:
            counters.skipped_steps += 1
            counters.bad_in_row += 1
            monitor.write(
                f"step {counters.step + 1}: non-finite loss/gradient ({loss_value}, "
                f"{norm_value}); step skipped ({counters.bad_in_row} in a row)."
            )
        # CUDA graphs add into kept .grad buffers (Parallel.begin_micro_batch): zero, not free.
        self.optimizer.zero_grad(set_to_none=not self.parallel.cuda_graphs)
        tokens_per_step = training.global_batch_size * self.config.seq_len
        counters.step += 1
        counters.tokens_seen += tokens_per_step
        tokens_per_s = tokens_per_step / max(time.perf_counter() - tick, 1e-9)
        if result.first_loss is None:
            result.first_loss = loss_value
        result.last_loss = loss_value
        self._log_step(monitor, loss_value, lr, norm_value, tokens_per_s)
        if self._compile_pending:  # the first step of a compiled model includes compiling it
            self._compile_pending = False
            seconds = time.perf_counter() - tick
            graphs = self.parallel.cuda_graphs
            monitor.log({"step": counters.step, "compile_s": seconds, "cuda_graphs": graphs})
            monitor.write(
                f"torch.compile{' with CUDA graphs' if graphs else ''}: first step "
                f"{seconds:.1f} s, compilation included."
            )
        if counters.bad_in_row >= training.max_bad_steps:
            raise TrainingError(
                f"{counters.bad_in_row} non-finite losses in a row at step {counters.step} "
                f"(training.max_bad_steps={training.max_bad_steps}); stopping. The last good "
                f"checkpoint is intact in '{self.run.root}'. Lower training.lr or raise "
                f"training.warmup_steps."
            )

    def _log_step(
        self, monitor: Monitor, loss: float, lr: float, grad_norm: float, tokens_per_s: float
    ) -> None:
        counters, max_steps = self.counters, self.config.training.max_steps
        if counters.step % self.config.logging.log_every == 0 or counters.step == max_steps:
            monitor.log(
                {
                    "step": counters.step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_s,
                    "tokens_seen": counters.tokens_seen,
                    "skipped_steps": counters.skipped_steps,
                }
            )
        monitor.progress(counters.step, loss, lr, tokens_per_s)

    def _refuse_nonfinite_weights(self, step: int, model: PicoDecoder) -> None:
        """A checkpoint is a promise of usable weights: never save NaN/inf ones.

        `model` holds the full weights on every rank, so every rank decides alike."""
        with torch.no_grad():
            bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            good = latest_step(self.run) if self.dist.is_main else None
            kept = f"step {good}" if good is not None else "none yet"
            raise TrainingError(
                f"the weights are not finite at step {step} ({bad[0]} and {len(bad) - 1} more); "
                f"checkpoint not written. The last good checkpoint ({kept}) is intact in "
                f"'{self.run.root}'. Lower training.lr or raise training.warmup_steps."
            )

    def _batch(self, step: int) -> torch.Tensor:
        return self.data.train_batch(
            step, self.config.training.global_batch_size, self.dist.rank, self.dist.world_size
        )

    # ------------------------------------------------------------------------------------------

    def save(
        self, step: int, monitor: Monitor, result: TrainResult, train_batch: torch.Tensor
    ) -> None:
        """Evaluate, then write checkpoint `step` (all ranks compute, rank 0 writes).

        train_batch: this rank's rows of the global batch that step `step` trained on.
        """
        model = full_model(self.parallel)  # gathered from the shards under FSDP
        self._refuse_nonfinite_weights(step, model)
        eval_rows = self.data.eval_batch()
        scores = {}
        if self.config.evaluation.enabled:
            scores = self.evaluate(step, eval_rows, monitor, model)
            result.eval = scores
        optimizer = optimizer_for_checkpoint(
            self.parallel, self.optimizer, self.param_names, gather=True
        )
        contents = CheckpointContents(
            step=step,
            model=model,
            tokenizer=self.tokenizer,
            optimizer=optimizer,
            param_names=self.param_names,
            counters=asdict(self.counters),
            data_fingerprint=self.data.fingerprint,
            scores=scores,
            batches={TRAIN_SPLIT: train_batch, EVAL_SPLIT: eval_rows},
        )
        with activation_checkpointing_paused():
            write_checkpoint(self.run, contents, self.config, self.dist, self.autocast)
        result.checkpoints.append(step)

    def evaluate(
        self, step: int, eval_rows: torch.Tensor, monitor: Monitor, model: PicoDecoder
    ) -> dict[str, float]:
        """Held-out loss and perplexity at `step`, logged and printed."""
        scores = heldout_loss(
            model, eval_rows, self.config.evaluation.batch_size, self.dist, self.autocast
        )
        monitor.log({"step": step, **scores})
        monitor.write(
            f"step {step}: held-out loss {scores['eval_loss']:.4f}, perplexity "
            f"{scores['eval_perplexity']:.2f}"
        )
        return scores


def train(config: RunConfig, *, force: bool = False, device: str | None = None) -> TrainResult:
    """Train (or resume) the run described by `config`."""
    try:
        trainer = Trainer(config, force=force, device=device)
        try:
            result = trainer.fit()
        finally:
            trainer.close()
    except BaseException as err:
        # Under torchrun: print the error once and exit now, never wait on the other ranks.
        distributed.stop_on_error(err, same_on_every_rank=ERRORS_ON_EVERY_RANK)
        raise
    # Free the model's DDP/FSDP state while the process group still exists: destroying them
    # after it (when this frame's references go) could block a rank at exit.
    del trainer
    distributed.teardown()
    return result
