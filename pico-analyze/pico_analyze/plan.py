"""The plan of an analysis: what to measure, for which runs, steps and layers.

Reads an :class:`~pico_analyze.config.AnalysisConfig` and the runs' sources (their steps and
shapes, not their tensors) and writes plain, picklable data for the runner: a :class:`Task` per
(metric entry, component), a :class:`RunPlan` per run (analysed steps, layers, and the one
:class:`~pico_analyze.load.LoadRequest` every checkpoint is read with), :class:`Job` chunks of
steps for worker processes.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter

import torch

from pico_analyze.components import ComponentSpec
from pico_analyze.config import AnalysisConfig, ConfigError, MetricEntry
from pico_analyze.load import LoadRequest, Source
from pico_analyze.metrics import get_metric
from pico_analyze.table import COLUMNS, Row

log = logging.getLogger("pico_analyze")


@dataclass(frozen=True)
class Task:
    """One metric entry, resolved for the runner (plain data, picklable)."""

    label: str
    metric: str
    settings: tuple
    comparative: bool
    target: str | int | None
    component: ComponentSpec
    splits: tuple[str | None, ...]
    layers: tuple[int, ...] | None


@dataclass
class RunPlan:
    source: Source
    steps: list[int]  # analysed
    layers: list[int]
    request: LoadRequest
    available: list[int]  # every checkpoint of the run (targets first/last refer to these)


@dataclass
class Job:
    """What one worker does: a contiguous chunk of steps, or every step of a chunk of layers
    (each run's plan then lists only those layers and loads only their tensors)."""

    runs: list[RunPlan]
    steps: list[int]
    tasks: list[Task]
    cross_tasks: list[Task]
    reference_run: int
    device: str
    force: bool
    share_svd: bool


@dataclass
class ChunkResult:
    rows: list[Row] = field(default_factory=list)
    # per row: where the runner made it (step, phase, run index, group, split, layer): one
    # process's row order, so chunks of layers merge into it (see runner.run_analysis)
    order: list[tuple] = field(default_factory=list)
    loads: list[tuple[str, int]] = field(default_factory=list)
    seconds_load: float = 0.0
    seconds_compute: float = 0.0

    # A worker process's result is pickled on its way back, after its last checkpoint: its rows
    # travel as tuples of their values (~10x faster to pickle than the dataclass objects).
    def __getstate__(self) -> dict:
        return {**self.__dict__, "rows": [_ROW_VALUES(r) for r in self.rows]}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, rows=[Row(*values) for values in state["rows"]])


_ROW_VALUES = attrgetter(*COLUMNS)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available.")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' requested but MPS is not available.")
    return device


def tasks_from(entries: list[MetricEntry], cfg: AnalysisConfig) -> list[Task]:
    out = []
    for e in entries:
        spec = get_metric(e.metric)
        for c in e.components:
            splits = tuple(e.splits or cfg.splits) if c.split_dependent else (None,)
            out.append(
                Task(
                    e.label,
                    e.metric,
                    tuple(
                        sorted(
                            (k, tuple(v) if isinstance(v, list) else v)
                            for k, v in e.settings.items()
                        )
                    ),  # hashable
                    spec.comparative,
                    e.target,
                    c,
                    splits,
                    tuple(e.layers) if e.layers is not None else None,
                )
            )
    return out


def request_for(tasks: list[Task], layers: list[int]) -> LoadRequest:
    req = LoadRequest()
    for t in tasks:
        for layer in t.layers or layers:
            for kind, module in t.component.needs(layer):
                for split in t.splits:
                    req.add(kind, module, split)
    return req


# ----------------------------------------------------------------------------------------------
# One chunk (runs in the main process or in a worker)
# ----------------------------------------------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_budget() -> int:
    """Threads the analysis may keep busy in all: the cores this process may run on (limit
    them with taskset, or the process count with --workers)."""
    return available_cores()


def worker_plan(requested: int, budget: int) -> tuple[int, int]:
    """(processes, torch threads per process) for `requested` processes within `budget`
    threads: processes x threads never exceeds the budget (no oversubscription).

    Each process runs ONE torch thread. The analysis is many small matrix operations
    (d x d circuits, 128-row activations), where intra-op threads gain little and, on a shared
    machine, OpenMP's spinning threads lose badly: measured on 2 busy cores
    (benchmarks/bench_analyze.py, tiny shape), one process with 2 threads took 112 CPU-s and
    299 s against 5.8 CPU-s and 19 s with one thread. Parallelism comes from processes."""
    workers = max(1, min(requested, budget))
    if workers < requested:
        log.warning(
            "%d workers requested but only %d cores/threads are available: using %d",
            requested,
            budget,
            workers,
        )
    return workers, 1


@contextmanager
def torch_threads(n: int = 1):
    """Run the block with `n` torch intra-op threads (default one: see :func:`worker_plan`),
    then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def auto_workers(n_steps: int, device: str) -> int:
    """Worker processes at most worth starting: 1 on a GPU or for fewer than 3 checkpoints; else
    one per thread of the budget, each taking at least 2 checkpoints, at most 4 (forked at once
    on Linux; spawned only if the first checkpoint took long enough to repay their start-up)."""
    if device != "cpu" or n_steps < 3:
        return 1
    return max(1, min(thread_budget(), n_steps // 2, 4))


def _check_requested_steps(sources: list[Source], cfg: AnalysisConfig) -> None:
    """Steps listed in the config that a run lacks: an error when no run has them (or there is
    one run), else a warning naming them per run."""
    if not isinstance(cfg.steps, list):
        return  # a range or all: whatever checkpoints exist
    held = {source.name: set(source.steps()) for source in sources}
    nowhere = [s for s in cfg.steps if not any(s in h for h in held.values())]
    for name, steps in held.items():
        missing = [s for s in cfg.steps if s not in steps]
        if missing and (len(sources) == 1 or nowhere):
            raise ConfigError(
                f"steps {missing} are not checkpoints of run '{name}' (available: {sorted(steps)})."
            )
        if missing:
            log.warning(
                "run '%s' has no checkpoint at steps %s; analysed without them", name, missing
            )


def plan_runs(sources: list[Source], cfg: AnalysisConfig, tasks: list[Task]) -> list[RunPlan]:
    _check_requested_steps(sources, cfg)
    plans = []
    for source in sources:
        available = source.steps()
        if not available:
            raise ConfigError(f"Run '{source.name}' has no checkpoints to analyse.")
        steps = cfg.select_steps(available)
        if not steps:
            raise ConfigError(
                f"No checkpoint of run '{source.name}' matches steps={cfg.steps} "
                f"(available: {available})."
            )
        n_layers = source.shape().n_layers
        layers = sorted(set(cfg.layers)) if cfg.layers is not None else list(range(n_layers))
        bad = [layer for layer in layers if not 0 <= layer < n_layers]
        if bad and len(sources) == 1:
            raise ConfigError(f"layers {bad} out of range: run '{source.name}' has {n_layers}.")
        layers = [layer for layer in layers if 0 <= layer < n_layers]
        for t in tasks:
            if t.comparative and isinstance(t.target, int) and t.target not in available:
                raise ConfigError(
                    f"{t.label}: target step {t.target} is not a checkpoint of "
                    f"'{source.name}' (available: {available})."
                )
        plans.append(RunPlan(source, steps, layers, request_for(tasks, layers), available))
    return plans


def layer_chunks(job: Job, n: int) -> list[Job]:
    """`job` as `n` jobs over contiguous chunks of the layer ids (the same ids in every run, so
    that cross-run comparisons of a layer stay in one chunk), every step each; fewer when there
    are fewer layers. Each chunk loads only its layers' tensors."""
    ids = sorted({layer for plan in job.runs for layer in plan.layers})
    parts = [ids[i * len(ids) // n : (i + 1) * len(ids) // n] for i in range(n)]
    tasks = job.tasks + job.cross_tasks
    out = []
    for part in (set(p) for p in parts if p):
        runs = []
        for plan in job.runs:
            layers = [layer for layer in plan.layers if layer in part]
            runs.append(replace(plan, layers=layers, request=request_for(tasks, layers)))
        out.append(replace(job, runs=runs))
    return out


def with_references(plan: RunPlan, tasks: list[Task]) -> list[int]:
    """Analysed steps plus the fixed target steps they are compared with."""
    available = plan.available
    extra = {
        ({"last": available[-1], "first": available[0]}.get(t.target, t.target))
        for t in tasks
        if t.comparative and t.target not in (None, "previous")
    }
    return sorted(set(plan.steps) | {s for s in extra if s is not None})
