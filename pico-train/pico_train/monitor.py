"""Training progress: a progress bar, the JSON-lines log, and optional TensorBoard / W&B.

Reads one record per logged step from the loop; writes RUN/log.jsonl (through pico_format's
paths), a tqdm bar with step, loss, lr, tokens/s and ETA, and the optional loggers. Only rank 0
creates a Monitor that writes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pico_format import RunPaths, read_log, write_text_atomic
from pico_train.config import ConfigError, LoggingConfig, RunConfig


def check_integrations(cfg: LoggingConfig) -> None:
    """Refuse optional loggers that are not installed, before anything is created."""
    import importlib.util

    wanted = {"tensorboard": cfg.tensorboard, "wandb": cfg.wandb}
    for name, on in wanted.items():
        if on and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"logging.{name}=true needs the {name} package: `pip install {name}`, or set "
                f"logging.{name}=false."
            )


def truncate_log(path: Path, step: int) -> None:
    """Keep only records up to `step`: a resumed run rewrites what came after its checkpoint."""
    kept = [r for r in read_log(path) if r.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


class Monitor:
    def __init__(self, config: RunConfig, run: RunPaths, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.total = config.training.max_steps
        self.bar = None
        self._file = None
        self._tb = None
        self._wandb = None
        self._plain_every = 0
        if not enabled:
            return
        self._file = open(run.log, "a")
        # A bar on a terminal; elsewhere (a log file, a pipe) a plain line every ~5% of the run,
        # so the output holds no carriage-return litter.
        if config.logging.progress and sys.stderr.isatty():
            self.bar = tqdm(
                total=self.total, initial=start_step, desc="train", unit="step", dynamic_ncols=True
            )
        elif config.logging.progress:
            self._plain_every = max(1, self.total // 20)
        if config.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("logging.tensorboard needs `pip install tensorboard`.") from err
            self._tb = SummaryWriter(log_dir=str(run.tensorboard))
        if config.logging.wandb:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("logging.wandb needs `pip install wandb`.") from err
            self._wandb = wandb.init(
                project=config.logging.wandb_project,
                name=Path(config.run_dir).name,
                config=config.to_dict(),
                resume="allow",
            )

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold 'step') to every sink; flushed so a kill loses little."""
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = record["step"]
        numbers = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def progress(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._plain_every and (step % self._plain_every == 0 or step == self.total):
            print(
                f"train: step {step}/{self.total}, loss {loss:.4f}, lr {lr:.2e}, "
                f"{tokens_per_s:,.0f} tokens/s",
                flush=True,
            )
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False
            )

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
