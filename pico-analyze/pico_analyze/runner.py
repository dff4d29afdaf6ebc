"""The runner: steps x components x layers x metrics, each loop once; returns table rows.

Reads checkpoints through :class:`~pico_analyze.load.Source` (each checkpoint loaded once, only
the tensors the config needs, on the analysis device), builds each component once per layer
(:mod:`pico_analyze.components`), applies every metric entry that uses it and writes nothing: it
returns :class:`~pico_analyze.table.Row` objects for :mod:`pico_analyze.table`.

* Metrics get each tensor as loaded (float32 captures stay float32; bf16 ones are upcast to
  float32 by the loader, exactly; circuits are float64 products), so every value in
  the table equals a direct call of the metric on that tensor, and rank tolerances documented
  for the input's dtype hold in the table too.
* The metrics of one matrix share one singular value decomposition
  (:mod:`pico_analyze.metrics.singular_values`); per-head circuits get theirs from their low-rank
  factors.

* Comparative metrics are called ``fn(reference, current)``: the reference is the target step
  (``last``/``first``/a step: loaded once and kept), the previous analysed step (kept from the
  iteration before), or, for cross-run entries, the reference run at the same step.
* Comparing captures of different inputs (the train split across steps, or batches whose token
  ids differ) is refused, as a note, unless forced.
* A value that cannot be measured (missing data, a component that cannot be built, a
  :class:`MetricError` or any other error of a metric) is a
  :class:`~pico_analyze.table.NotMeasurable`: its row has value NaN and the reason in `note`;
  the analysis goes on.
* One path serves both kinds of comparison: a run against its own target steps, and (compare)
  each run against the reference run at the same step; only the reference differs.
* Checkpoints are processed in contiguous chunks by worker processes when that helps; a chunk
  also loads the step before it (for ``previous``) and the target steps once.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from pico_analyze.components import ComponentSpec, ComponentValue, build
from pico_analyze.config import AnalysisConfig, ConfigError
from pico_analyze.forking import frozen_objects
from pico_analyze.load import Checkpoint, MissingData, Source
from pico_analyze.metrics import get_metric
from pico_analyze.metrics.registry import MetricError
from pico_analyze.metrics.singular_values import (
    SharedSingularValues,
    concat_singular_values,
    low_rank_singular_values,
)
from pico_analyze.plan import (
    ChunkResult,
    Job,
    Task,
    auto_workers,
    layer_chunks,
    plan_runs,
    resolve_device,
    tasks_from,
    thread_budget,
    torch_threads,
    with_references,
    worker_plan,
)
from pico_analyze.table import NotMeasurable, Row

__all__ = ["Row", "run_analysis"]


class _State:
    """A loaded checkpoint and the components built from it so far."""

    def __init__(self, ckpt: Checkpoint, share_svd: bool):
        self.ckpt, self.share_svd = ckpt, share_svd
        self.cache: dict[tuple, list[ComponentValue] | NotMeasurable] = {}

    def component(
        self, spec: ComponentSpec, split: str | None, layer: int
    ) -> list[ComponentValue] | NotMeasurable:
        """The component's values, or why they cannot be built."""
        key = (split, spec.key, layer)
        if key not in self.cache:
            get = lambda kind, mod: self.ckpt.tensor(kind, mod, split)  # noqa: E731
            try:
                values = build(spec, layer, get, self.ckpt.shape)  # as loaded: no upcast
                heads = [v for v in values if v.factors is not None]
                if heads and self.share_svd:  # all heads' singular values in one batched call
                    a = torch.stack([v.factors[0] for v in heads])
                    b = torch.stack([v.factors[1] for v in heads])
                    for v, sv in zip(heads, low_rank_singular_values(a, b)):
                        v.singular_values = sv
                for v in values:  # all heads side by side: from the factors too
                    if v.head_factors is not None and self.share_svd:
                        v.singular_values = concat_singular_values(*v.head_factors)
                self.cache[key] = values
            except MissingData as err:
                self.cache[key] = NotMeasurable(f"missing: {err}")
            except (ValueError, RuntimeError) as err:
                self.cache[key] = NotMeasurable(f"component failed: {err}")
        return self.cache[key]


def _measure(task: Task, *tensors: torch.Tensor) -> float | NotMeasurable:
    try:
        value = float(get_metric(task.metric).fn(*tensors, **dict(task.settings)))
    except MetricError as err:
        return NotMeasurable(str(err))
    except Exception as err:  # one bad input never aborts the analysis
        return NotMeasurable(f"{type(err).__name__}: {err}")
    return value if math.isfinite(value) else NotMeasurable(f"non-finite value ({value})")


def _input_problem(cur: Checkpoint, ref: Checkpoint, split: str | None) -> str | None:
    """Why captures `cur` and `ref` of `split` did not see the same inputs, or None."""
    if split is None:
        return None
    a, b = cur.splits.get(split), ref.splits.get(split)
    if a is None or b is None:
        return None  # reported as missing data
    if a.token_ids is not None and b.token_ids is not None:
        return (
            None
            if a.token_ids == b.token_ids
            else (f"the '{split}' captures are different batches (token ids differ)")
        )
    if split == "train":
        return "the 'train' capture is a different batch at every step"
    return None


def _advice(split: str | None) -> str:
    """What to do about a refused comparison of two captures of `split`."""
    if split == "train":
        return (
            "compare the eval split (the same held-out batch at every step), or force it "
            "with --force-train-split"
        )
    return (
        "similarity of different inputs is not comparable; were the runs trained on "
        "different data (data fingerprint in run.json)?"
    )


def _groups(tasks: list[Task]) -> list[list[Task]]:
    """Tasks grouped by component, in config order: each component is built once per layer."""
    out: dict[str, list[Task]] = {}
    for t in tasks:
        out.setdefault(t.component.key, []).append(t)
    return list(out.values())


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class _Where:
    """What a comparative value is compared with: run index `run` at `step`."""

    run: int
    step: int


@dataclass
class _Reference:
    """The reference's values of one component at one layer, keyed by (component, head)."""

    where: _Where
    label: str  # "step N" or "run NAME", for notes
    values: dict[tuple[str, int | None], ComponentValue] | NotMeasurable
    problem: str | None  # why the inputs differ (train captures of different batches), or None


class _Chunk:
    def __init__(self, job: Job):
        self.job = job
        self.states: list[dict[int, _State]] = [{} for _ in job.runs]
        self.result = ChunkResult()
        self.svd = SharedSingularValues(job.share_svd)
        self.groups, self.cross_groups = _groups(job.tasks), _groups(job.cross_tasks)
        self.cell: tuple = ()  # where the rows being made belong (see ChunkResult.order)
        self.cross_keys = {t.component.key for t in job.cross_tasks}

    def compared_later(self, r: int, step: int, key: str) -> bool:
        """Whether component `key` of run `r` at `step` is still to be compared with: it is a
        fixed target of a comparative task, every step's is for `previous`, and every run's
        is for the cross-run comparisons of this step."""
        if key in self.cross_keys:
            return True
        return any(
            t.target == "previous" or self.target_step(r, t.target, step) == step
            for t in self.job.tasks
            if t.comparative and t.component.key == key
        )

    def state(self, r: int, step: int) -> _State:
        if step not in self.states[r]:
            plan = self.job.runs[r]
            t0 = time.perf_counter()
            ckpt = plan.source.load(step, plan.request, self.job.device)
            self.result.seconds_load += time.perf_counter() - t0
            self.result.loads.append((plan.source.name, step))
            self.states[r][step] = _State(ckpt, self.job.share_svd)
        return self.states[r][step]

    def target_step(self, r: int, target, step: int) -> int | None:
        plan = self.job.runs[r]
        if target == "previous":
            earlier = [s for s in plan.steps if s < step]
            return earlier[-1] if earlier else None
        return {"last": plan.available[-1], "first": plan.available[0]}.get(target, target)

    def row(
        self,
        r: int,
        step: int,
        task: Task,
        split: str | None,
        layer: int,
        value: ComponentValue | None,
        where: _Where | None,
        result: float | NotMeasurable,
        warning: str = "",
    ) -> None:
        missing = isinstance(result, NotMeasurable)
        note = "; ".join(x for x in (warning, result.reason if missing else "") if x)
        self.result.order.append(self.cell)
        self.result.rows.append(
            Row(
                run=self.job.runs[r].source.name,
                step=step,
                split=split,
                component=value.component if value else task.component.type,
                kind=task.component.kind,
                module=task.component.module_label,
                layer=layer,
                head=value.head if value else None,
                metric=task.label,
                function=task.metric,
                reference_step=where.step if where else None,
                reference_run=(
                    self.job.runs[where.run].source.name if where and where.run != r else None
                ),
                value=math.nan if missing else result,
                note=note,
            )
        )

    def reference(
        self, cur: _State, r: int, where: _Where, spec: ComponentSpec, split, layer
    ) -> _Reference:
        """The component at `where`, and whether its inputs match the current step's."""
        ref = self.state(where.run, where.step)
        label = (
            f"run {self.job.runs[where.run].source.name}"
            if where.run != r
            else f"step {where.step}"
        )
        values = ref.component(spec, split, layer)
        if isinstance(values, NotMeasurable):
            return _Reference(
                where, label, NotMeasurable(f"reference {label}: {values.reason}"), None
            )
        by_key = {(v.component, v.head): v for v in values}
        return _Reference(where, label, by_key, _input_problem(cur.ckpt, ref.ckpt, split))

    def measure(self, r, step, split, layer, values, tasks, refs: dict[Task, _Reference]) -> None:
        """Every task on every value; one value's singular values serve all its tasks."""
        for t in tasks:
            ref = refs.get(t)
            if ref is not None and isinstance(ref.values, NotMeasurable):
                self.row(r, step, t, split, layer, None, ref.where, ref.values)
        for v in values:
            self.svd.prime(v.tensor, v.singular_values)
            for t in tasks:
                if not t.comparative:
                    self.row(r, step, t, split, layer, v, None, _measure(t, v.tensor))
                    continue
                ref = refs.get(t)
                if ref is None or isinstance(ref.values, NotMeasurable):
                    continue  # no previous step yet, or noted above
                other = ref.values.get((v.component, v.head))
                warning = ""
                if other is None:
                    result = NotMeasurable(
                        f"reference {ref.label} has no {v.component} head {v.head}"
                    )
                elif ref.problem and not self.job.force:
                    result = NotMeasurable(f"refused: {ref.problem}; {_advice(split)}")
                else:
                    self.svd.pin(other.tensor)  # compared with every step: derive once
                    result = _measure(t, other.tensor, v.tensor)
                    warning = f"forced: {ref.problem}" if ref.problem else ""
                self.row(r, step, t, split, layer, v, ref.where, result, warning)
            self.svd.clear()

    def cells(self, group: list[Task], layers: list[int]):
        """(split, layer, tasks) for one component group, splits and layers in order."""
        for split in _ordered(s for t in group for s in t.splits):
            for layer in layers:
                tasks = [
                    t
                    for t in group
                    if split in t.splits and (t.layers is None or layer in t.layers)
                ]
                if tasks:
                    yield split, layer, tasks

    def analyse(
        self, r: int, step: int, groups, layers: list[int], reference_of, phase: int = 0
    ) -> None:
        """Run `r` at `step`: every task of `groups` at `layers`; a comparative task is compared
        with ``reference_of(task)`` (a :class:`_Where`, or None when there is none yet).
        `phase`: 0 for a run's own tasks, 1 for the cross-run ones (for the row order)."""
        cur = self.state(r, step)
        for g, group in enumerate(groups):
            spec = group[0].component
            splits = _ordered(s for t in group for s in t.splits)
            for split, layer, tasks in self.cells(group, layers):
                self.cell = (step, phase, r, g, splits.index(split), layer)
                values = cur.component(spec, split, layer)
                wheres = {t: reference_of(t) for t in tasks if t.comparative}
                if isinstance(values, NotMeasurable):
                    for t in tasks:
                        self.row(r, step, t, split, layer, None, wheres.get(t), values)
                    continue
                refs = {
                    t: self.reference(cur, r, w, spec, split, layer)
                    for t, w in wheres.items()
                    if w is not None
                }
                self.measure(r, step, split, layer, values, tasks, refs)
                if not self.compared_later(r, step, spec.key):  # memory: one cell at a time
                    cur.cache.pop((split, spec.key, layer), None)

    def analyse_step(self, step: int) -> None:
        """Every run at `step` against its own target steps, then (compare) each run against
        the reference run at the same step, on the layers both have."""
        for r, plan in enumerate(self.job.runs):
            if step in plan.steps:

                def own(t: Task, r=r) -> _Where | None:
                    ref_step = self.target_step(r, t.target, step)
                    return None if ref_step is None else _Where(r, ref_step)

                self.analyse(r, step, self.groups, plan.layers, own)
        ref_r = self.job.reference_run
        ref_plan = self.job.runs[ref_r]
        if not self.cross_groups or step not in ref_plan.steps:
            return
        for r, plan in enumerate(self.job.runs):
            if r != ref_r and step in plan.steps:
                layers = [x for x in plan.layers if x in ref_plan.layers]
                where = lambda t: _Where(ref_r, step)  # noqa: E731
                self.analyse(r, step, self.cross_groups, layers, where, phase=1)

    def evict(self, step: int) -> None:
        """Keep only what later steps compare with: this step (previous) and fixed targets."""
        compared = {t.component.key for t in self.job.tasks if t.comparative}
        for r, states in enumerate(self.states):
            keep = {step} | {
                self.target_step(r, t.target, step)
                for t in self.job.tasks
                if t.comparative and t.target != "previous"
            }
            for s in list(states):
                if s not in keep:
                    del states[s]
                elif s == step:
                    states[s].cache = {k: v for k, v in states[s].cache.items() if k[1] in compared}

    def run(self, steps: list[int] | None = None, on_step=None) -> ChunkResult:
        """Analyse `steps` (default: the job's), in order; may be called again to go on."""
        with self.svd:
            for step in self.job.steps if steps is None else steps:
                t0 = time.perf_counter()
                loaded = self.result.seconds_load
                self.analyse_step(step)
                self.evict(step)
                spent = time.perf_counter() - t0 - (self.result.seconds_load - loaded)
                self.result.seconds_compute += spent
                if on_step:
                    on_step()
        return self.result


def _run_job(job: Job, threads: int) -> ChunkResult:
    torch.set_num_threads(threads)  # this worker's share of the thread budget
    return _Chunk(job).run()


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

SPAWN_SECONDS = 3.0  # a spawned worker's start (imports torch) and its extra checkpoint loads


def _forks(device: str) -> bool:
    """Whether worker processes are forked: on Linux for the CPU (they start at once, inheriting
    the imports; nothing is loaded yet when they are forked). Elsewhere they are spawned: CUDA
    cannot be used in a forked child, and macOS/Windows do not fork safely."""
    return device == "cpu" and sys.platform.startswith("linux")


def _together(here: _Chunk, mine: list[int], others: list[Job], threads: int, bar):
    """`here` analyses the steps `mine` of its job in this process while worker processes
    (forked or spawned, see :func:`_forks`; `threads` torch threads each) analyse the jobs
    `others`; returns every chunk's result. The bar counts this process's steps and each
    worker's when it is done (a worker over a chunk of layers adds none: this process counts
    every step of its own layers)."""
    tick = lambda: bar.update(1)  # noqa: E731
    if not others:
        return [here.run(mine, on_step=tick)]
    ctx = multiprocessing.get_context("fork" if _forks(here.job.device) else "spawn")
    with frozen_objects():  # the workers never scan (nor copy on write) what exists now
        pool = ProcessPoolExecutor(len(others), mp_context=ctx)
        futures = [pool.submit(_run_job, other, threads) for other in others]
    with pool:
        for fut, other in zip(futures, others):
            size = 0 if other.steps == here.job.steps else len(other.steps)
            fut.add_done_callback(lambda _, n=size: bar.update(n))
        results = [here.run(mine, on_step=tick)]
        results += [fut.result() for fut in futures]
    return results


def _chunks(job: Job, k: int) -> list[Job]:
    """`job` in `k` chunks: of layers where workers are forked and there are enough layers
    (every chunk then has the same work: the steps are few, e.g. 5 checkpoints on 2 cores would
    split 3:2), else of contiguous steps."""
    n_layers = len({layer for plan in job.runs for layer in plan.layers})
    if k > 1 and _forks(job.device) and n_layers >= k:
        return layer_chunks(job, k)
    return [replace(job, steps=c) for c in _split(job.steps, k)]


def _execute(job: Job, requested: int | None, bar) -> list[ChunkResult]:
    """Analyse the job's steps with `requested` worker processes (None: automatic), keeping
    processes x torch threads within the thread budget. This process always takes the first
    chunk, so with k workers there are k processes in all."""
    budget, steps = thread_budget(), job.steps
    if requested is not None or _forks(job.device):  # a forked worker costs ~0.1 s
        if requested is None:
            requested = auto_workers(len(steps), job.device)
        n_layers = len({layer for plan in job.runs for layer in plan.layers})
        most = max(len(steps), n_layers if _forks(job.device) else 0)
        k, threads = worker_plan(min(requested, most), budget)
        chunks = _chunks(job, k)
        with torch_threads(threads):
            return _together(_Chunk(chunks[0]), chunks[0].steps, chunks[1:], threads, bar)
    here = _Chunk(job)
    k, threads = worker_plan(auto_workers(len(steps), job.device), budget)
    with torch_threads(threads):
        if k == 1:
            return _together(here, steps, [], threads, bar)
        t0 = time.perf_counter()
        here.run(steps[:1], on_step=lambda: bar.update(1))
        rest = steps[1:]
        saving = (time.perf_counter() - t0) * len(rest) * (1 - 1 / k)
        chunks = _split(rest, k) if saving > SPAWN_SECONDS * 2 else [rest]
        others = [replace(job, steps=c) for c in chunks[1:]]
        return _together(here, chunks[0], others, threads, bar)


def _split(steps: list[int], n: int) -> list[list[int]]:
    return [
        c for c in (steps[i * len(steps) // n : (i + 1) * len(steps) // n] for i in range(n)) if c
    ]


def run_analysis(
    sources: list[Source],
    cfg: AnalysisConfig,
    *,
    cross: bool = False,
    device: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[list[Row], ChunkResult]:
    """Analyse `sources` (several: also cross-run comparisons); return rows and timing stats.

    Workers: a number runs that many processes (this one included) over contiguous chunks of
    steps, each with one torch thread, at most one per thread of the budget (torch's thread
    count of this process, at most the available cores; see plan.worker_plan). Left automatic:
    on Linux on the CPU, workers are forked at once (plan.auto_workers of them); elsewhere the
    first checkpoint is analysed here and timed, and the others go to spawned worker processes
    only when the expected saving exceeds their start-up cost (else this process goes on, so
    every checkpoint is loaded once).
    """
    device = resolve_device(device or cfg.device)
    tasks = tasks_from(cfg.metrics, cfg)
    cross_tasks = tasks_from(cfg.compare.metrics, cfg) if cross and len(sources) > 1 else []
    plans = plan_runs(sources, cfg, tasks + cross_tasks)
    for plan in plans:
        plan.source.prepare(with_references(plan, tasks), plan.request)
    names = [p.source.name for p in plans]
    ref = cfg.compare.reference
    if ref is not None and ref not in names:
        raise ConfigError(f"compare.reference '{ref}' is not one of the runs: {names}.")
    reference_run = names.index(ref) if ref is not None else 0
    cross_tasks = [replace(t, label=f"{t.label}@{names[reference_run]}") for t in cross_tasks]
    steps = sorted({s for p in plans for s in p.steps})
    job = Job(
        plans,
        steps,
        tasks,
        cross_tasks,
        reference_run,
        device,
        cfg.force_train_split,
        cfg.share_singular_values,
    )
    n = workers if workers is not None else cfg.workers
    show = cfg.progress if progress is None else progress
    # disable=None: tqdm shows the bar on a terminal only (no carriage returns in a log file)
    with tqdm(
        total=len(steps), desc="checkpoints", unit="ckpt", disable=None if show else True
    ) as bar:
        results = _execute(job, n, bar)
    total = ChunkResult()
    for res in results:
        total.rows += res.rows
        total.order += res.order
        total.loads += res.loads
        total.seconds_load += res.seconds_load
        total.seconds_compute += res.seconds_compute
    # One process's order whatever the chunks: by run and step, then where in the step each
    # row was made (a cell's rows come from one chunk, in order; the sort is stable).
    pairs = sorted(zip(total.order, total.rows), key=lambda p: (p[1].run, p[1].step, p[0][1:]))
    total.rows = [row for _, row in pairs]
    total.order = [cell for cell, _ in pairs]
    return total.rows, total
