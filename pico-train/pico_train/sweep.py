"""A scale sweep: one config trained at several model presets into sibling run directories.

Reads a YAML config (+ dot-path overrides) and a list of preset names; writes one run directory
per preset, ``RUN_DIR/<preset>`` where RUN_DIR is the config's ``run_dir`` (``runs/sweep``
without a config file). Only the model shape
changes between the runs: the data section, the schedule and the checkpoint steps are the
config's, so every run sees the same batches in the same order (one global order, whatever the
model size) and is checkpointed at the same steps, which is what a cross-scale comparison needs.
Every config is built and validated before the first run starts; a finished run is skipped
(training resumes it, and a complete run has nothing to do).

    pico-train sweep --config examples/sweep.yaml --presets demo-w32,demo-w64,demo
    pico-analyze compare runs/sweep/demo-w32 runs/sweep/demo-w64 runs/sweep/demo
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pico_format.yaml_file import did_you_mean
from pico_train.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    checkpoint_steps,
    load_config,
    print_note,
)
from pico_train.train import TrainResult, train

DEFAULT_ROOT = "runs/sweep"


@dataclass
class SweepPlan:
    """The validated configs of a sweep, in the order given."""

    root: Path
    configs: dict[str, RunConfig]

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(c.run_dir) for c in self.configs.values()]


def parse_presets(text: str | list[str]) -> list[str]:
    """'a,b,c' (or a list) -> preset names, checked against PRESETS, without duplicates."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if len(names) < 2:
        raise ConfigError(f"--presets: a sweep needs at least two presets, got {names}.")
    for n in names:
        if n not in PRESETS:
            raise ConfigError(f"--presets: unknown preset '{n}'.{did_you_mean(n, list(PRESETS))}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--presets: {', '.join(repeated)} given twice.")
    return names


def plan_sweep(
    config_path: str | Path | None,
    presets: str | list[str],
    overrides: list[str] | tuple[str, ...] = (),
) -> SweepPlan:
    """Build and validate every run's config before any training."""
    names = parse_presets(presets)
    notes: list[str] = []  # the runs share most settings: each note is printed once

    def collect(message: str) -> None:
        if message not in notes:
            notes.append(message)

    base = load_config(config_path, overrides, note=collect)
    # Without a config file or a run_dir override, the sweep goes to runs/sweep.
    named = config_path is not None or any(o.startswith("run_dir=") for o in overrides)
    root = Path(base.run_dir if named else DEFAULT_ROOT)
    configs = {
        n: load_config(config_path, [*overrides, f"run_dir={root / n}"], preset=n, note=collect)
        for n in names
    }
    for message in notes:
        print_note(message)
    first = next(iter(configs.values()))
    for name, c in configs.items():
        # The presets differ only in the model; these must agree for the runs to be comparable.
        if c.to_dict()["data"] != first.to_dict()["data"] or c.seq_len != first.seq_len:
            raise ConfigError(f"preset {name}: the data settings differ from the other runs'.")
        if checkpoint_steps(c) != checkpoint_steps(first):
            raise ConfigError(f"preset {name}: the checkpoint steps differ from the other runs'.")
    return SweepPlan(root, configs)


def run_sweep(
    plan: SweepPlan,
    *,
    force: bool = False,
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[TrainResult]:
    """Train every run of the plan in turn (each resumes if interrupted); return their results."""
    results = []
    for i, (name, config) in enumerate(plan.configs.items(), 1):
        shape = config.model
        echo(
            f"[{i}/{len(plan.configs)}] {name}: d_model {shape.d_model}, {shape.n_layers} "
            f"layers -> {config.run_dir}"
        )
        results.append(train(config, force=force, device=device))
    return results


def compare_command(plan: SweepPlan) -> str:
    """The pico-analyze command that compares the sweep's runs."""
    dirs = " ".join(str(d) for d in plan.run_dirs)
    return f"pico-analyze compare {dirs} --out {plan.root / 'compare'}"
