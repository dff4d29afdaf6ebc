"""The runner: steps x components x layers x metrics, each loop once; returns table rows.

Reads checkpoints through :class:`~pico_analyze.load.Source` (each checkpoint loaded once, only
the tensors the config needs), builds components (:mod:`pico_analyze.components`), applies the
registered metrics and writes nothing: it returns :class:`Row` objects for
:mod:`pico_analyze.table`.

* Comparative metrics are called ``fn(reference, current)``: the reference is the target step
  (``last``/``first``/a step: loaded once and kept), the previous analysed step (kept from the
  iteration before), or, for cross-run entries, the reference run at the same step.
* Comparing captures of different inputs (the train split across steps, or batches whose token
  ids differ) is refused, as a note, unless forced.
* A metric that fails on one input (:class:`MetricError` or any other error) becomes a row with
  value NaN and the reason in `note`; the analysis goes on.
* Checkpoints are processed in contiguous chunks by worker processes when that helps; a chunk
  also loads the step before it (for ``previous``) and the target steps once.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from pico_analyze.components import ComponentSpec, ComponentValue, build
from pico_analyze.config import AnalysisConfig, ConfigError
from pico_analyze.load import Checkpoint, MissingData, Source
from pico_analyze.metrics import get_metric
from pico_analyze.metrics.registry import MetricError
from pico_analyze.plan import (
    ChunkResult,
    Job,
    Row,
    RunPlan,
    Task,
    auto_workers,
    plan_runs,
    resolve_device,
    tasks_from,
    with_references,
)

__all__ = ["Row", "run_analysis", "shared_singular_values"]


@contextlib.contextmanager
def shared_singular_values(enabled: bool):
    """Compute ``torch.linalg.svdvals`` once per tensor object while measuring one matrix.

    The spectral metrics (effective rank, PER, stable rank, condition number, nuclear and spectral
    norms) each ask for the singular values of the same float64 tensor; this memo hands the first
    result to the others. It keys on tensor identity and version, holds the tensor, and is cleared
    for every new matrix, so it can only return the singular values of that very tensor.
    """
    if not enabled:
        yield lambda: None
        return
    original = torch.linalg.svdvals
    memo: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def svdvals(a, *args, **kwargs):
        if args or kwargs or not isinstance(a, torch.Tensor):
            return original(a, *args, **kwargs)
        hit = memo.get(id(a))
        if hit is not None and hit[0] is a and hit[1] == a._version:
            return hit[2].clone()
        s = original(a)
        memo[id(a)] = (a, a._version, s)
        return s.clone()

    torch.linalg.svdvals = svdvals
    try:
        yield memo.clear
    finally:
        torch.linalg.svdvals = original


class _State:
    """A loaded checkpoint and the components built from it so far."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.cache: dict[tuple, list[ComponentValue] | str] = {}

    def component(
        self, spec: ComponentSpec, split: str | None, layer: int
    ) -> list[ComponentValue] | str:
        """The component's values, or the reason they cannot be built (a note)."""
        key = (split, spec.key, layer)
        if key not in self.cache:
            get = lambda kind, mod: self.ckpt.tensor(kind, mod, split)  # noqa: E731
            try:
                values = build(spec, layer, get, self.ckpt.shape)
                for v in values:  # float64 once here, not once per metric
                    if v.tensor.dtype != torch.float64 and v.tensor.device.type != "mps":
                        v.tensor = v.tensor.double()
                self.cache[key] = values
            except MissingData as err:
                self.cache[key] = f"missing: {err}"
            except (ValueError, RuntimeError) as err:
                self.cache[key] = f"component failed: {err}"
        return self.cache[key]


def _measure(task: Task, *tensors: torch.Tensor) -> tuple[float, str]:
    try:
        value = float(get_metric(task.metric).fn(*tensors, **dict(task.settings)))
    except MetricError as err:
        return math.nan, str(err)
    except Exception as err:  # one bad input never aborts the analysis
        return math.nan, f"{type(err).__name__}: {err}"
    return value, "" if math.isfinite(value) else "non-finite value"


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


class _Chunk:
    def __init__(self, job: Job):
        self.job = job
        self.states: list[dict[int, _State]] = [{} for _ in job.runs]
        self.result = ChunkResult()

    def state(self, r: int, step: int) -> _State:
        if step not in self.states[r]:
            plan = self.job.runs[r]
            t0 = time.perf_counter()
            ckpt = plan.source.load(step, plan.request, self.job.device)
            self.result.seconds_load += time.perf_counter() - t0
            self.result.loads.append((plan.source.name, step))
            self.states[r][step] = _State(ckpt)
        return self.states[r][step]

    def target_step(self, r: int, target, step: int) -> int | None:
        plan = self.job.runs[r]
        if target == "previous":
            earlier = [s for s in plan.steps if s < step]
            return earlier[-1] if earlier else None
        return {"last": plan.available[-1], "first": plan.available[0]}.get(target, target)

    def row(
        self,
        plan: RunPlan,
        step,
        task,
        split,
        layer,
        value: ComponentValue | None,
        reference,
        result: tuple[float, str],
        run: str | None = None,
    ) -> None:
        self.result.rows.append(
            Row(
                run=run or plan.source.name,
                step=step,
                split=split,
                component=value.component if value else task.component.type,
                kind=task.component.kind,
                module=task.component.module_label,
                layer=layer,
                head=value.head if value else None,
                metric=task.label,
                function=task.metric,
                reference=reference,
                value=result[0],
                note=result[1],
            )
        )

    def compare(
        self,
        plan,
        step,
        task,
        split,
        layer,
        cur: _State,
        ref: _State,
        reference,
        values,
        clear,
        run=None,
    ) -> None:
        ref_values = ref.component(task.component, split, layer)
        if isinstance(ref_values, str):
            self.row(
                plan,
                step,
                task,
                split,
                layer,
                None,
                reference,
                (math.nan, f"reference {reference}: {ref_values}"),
                run,
            )
            return
        problem = _input_problem(cur.ckpt, ref.ckpt, split)
        by_key = {(v.component, v.head): v for v in ref_values}
        for v in values:
            other = by_key.get((v.component, v.head))
            if other is None:
                result = (math.nan, f"reference {reference} has no {v.component} head {v.head}")
            elif problem and not self.job.force:
                result = (
                    math.nan,
                    f"refused: {problem}; compare eval captures or force it (--force-train-split)",
                )
            else:
                clear()
                result = _measure(task, other.tensor, v.tensor)
                if problem:
                    result = (
                        result[0],
                        f"forced: {problem}" + (f"; {result[1]}" if result[1] else ""),
                    )
            self.row(plan, step, task, split, layer, v, reference, result, run)

    def analyse(self, r: int, step: int, clear) -> None:
        plan, job = self.job.runs[r], self.job
        cur = self.state(r, step)
        for task in job.tasks:
            for split in task.splits:
                for layer in [x for x in task.layers or plan.layers if x in plan.layers]:
                    values = cur.component(task.component, split, layer)
                    if isinstance(values, str):
                        self.row(plan, step, task, split, layer, None, None, (math.nan, values))
                        continue
                    if not task.comparative:
                        for v in values:
                            clear()
                            self.row(
                                plan, step, task, split, layer, v, None, _measure(task, v.tensor)
                            )
                        continue
                    ref_step = self.target_step(r, task.target, step)
                    if ref_step is None:
                        continue  # the first analysed step has no previous one
                    self.compare(
                        plan,
                        step,
                        task,
                        split,
                        layer,
                        cur,
                        self.state(r, ref_step),
                        f"step {ref_step}",
                        values,
                        clear,
                    )

    def cross(self, step: int, clear) -> None:
        job = self.job
        ref_r = job.reference_run
        ref_plan = job.runs[ref_r]
        if step not in ref_plan.steps:
            return
        for r, plan in enumerate(job.runs):
            if r == ref_r or step not in plan.steps:
                continue
            cur, ref = self.state(r, step), self.state(ref_r, step)
            for task in job.cross_tasks:
                for split in task.splits:
                    for layer in task.layers or plan.layers:
                        if layer not in plan.layers or layer not in ref_plan.layers:
                            continue
                        values = cur.component(task.component, split, layer)
                        if isinstance(values, str):
                            self.row(
                                plan,
                                step,
                                task,
                                split,
                                layer,
                                None,
                                f"run {ref_plan.source.name}",
                                (math.nan, values),
                            )
                            continue
                        labelled = replace(task, label=f"{task.label}@{ref_plan.source.name}")
                        self.compare(
                            plan,
                            step,
                            labelled,
                            split,
                            layer,
                            cur,
                            ref,
                            f"run {ref_plan.source.name}",
                            values,
                            clear,
                        )

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

    def run(self, on_step=None) -> ChunkResult:
        with shared_singular_values(self.job.share_svd) as clear:
            for step in self.job.steps:
                t0 = time.perf_counter()
                loaded = self.result.seconds_load
                for r, plan in enumerate(self.job.runs):
                    if step in plan.steps:
                        self.analyse(r, step, clear)
                if len(self.job.runs) > 1 and self.job.cross_tasks:
                    self.cross(step, clear)
                self.evict(step)
                self.result.seconds_compute += (
                    time.perf_counter() - t0 - (self.result.seconds_load - loaded)
                )
                if on_step:
                    on_step()
        return self.result


def _run_job(job: Job) -> ChunkResult:
    return _Chunk(job).run()


# ----------------------------------------------------------------------------------------------
# Entry point


def run_analysis(
    sources: list[Source],
    cfg: AnalysisConfig,
    *,
    cross: bool = False,
    device: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[list[Row], ChunkResult]:
    """Analyse `sources` (several: also cross-run comparisons); return rows and timing stats."""
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
    steps = sorted({s for p in plans for s in p.steps})
    n = workers if workers is not None else cfg.workers
    n = max(1, min(n if n is not None else auto_workers(len(steps), device), len(steps)))
    chunks = [steps[i * len(steps) // n : (i + 1) * len(steps) // n] for i in range(n)]
    jobs = [
        Job(
            plans,
            c,
            tasks,
            cross_tasks,
            reference_run,
            device,
            cfg.force_train_split,
            cfg.share_singular_values,
        )
        for c in chunks
        if c
    ]
    show = cfg.progress if progress is None else progress
    total = ChunkResult()
    with tqdm(total=len(steps), desc="checkpoints", unit="ckpt", disable=not show) as bar:
        if len(jobs) == 1:
            results = [_Chunk(jobs[0]).run(on_step=lambda: bar.update(1))]
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(len(jobs), mp_context=ctx) as pool:
                futures = {pool.submit(_run_job, j): len(j.steps) for j in jobs}
                results = []
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update(futures[fut])
    for res in results:
        total.rows += res.rows
        total.loads += res.loads
        total.seconds_load += res.seconds_load
        total.seconds_compute += res.seconds_compute
    total.rows.sort(key=lambda r: (r.run, r.step))
    return total.rows, total
