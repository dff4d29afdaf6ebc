"""Layer x layer CKA: every layer against every other, within a run and across runs.

Reads each run's captured activations of one split (default ``eval``: the same held-out batch at
every step and in every run) through :meth:`~pico_analyze.load.Source.load`, and writes nothing:
returns :class:`LayerPair` records that :func:`write_pairs` saves as ``layer_similarity.csv``.

* Within a run, at the selected steps: CKA(layer i, layer j) of each captured module, for all
  i <= j (the matrix is symmetric).
* Across runs (``compare``): CKA(reference run's layer i, other run's layer j) for every i, j:
  runs of different depth and width compare (CKA needs only the same inputs). At every other
  shared step, the same-index pairs (i, i) only: their permutation null is the band drawn under
  the cross-run similarity curves.
* Each cross-run value carries a permutation null (:func:`~pico_analyze.metrics.similarity_null.
  cka_permutation_test`): the p-value and the 2.5%..97.5% band of CKA for unrelated inputs.

Pairs whose inputs differ (token ids of the two captures) are not measured; the reason is the
record's note.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, fields
from pathlib import Path

from pico_analyze.config import AnalysisConfig
from pico_analyze.layer_pair import LayerPair
from pico_analyze.load import LoadRequest, MissingData
from pico_analyze.metrics.registry import MetricError
from pico_analyze.metrics.similarity import cka
from pico_analyze.metrics.similarity_null import cka_permutation_test
from pico_format.modules import DEFAULT_CAPTURE_SUFFIXES as DEFAULT_SUFFIXES
from pico_format.modules import module_name

CSV_NAME = "layer_similarity.csv"


def modules_of(source, cfg: AnalysisConfig) -> list[str]:
    """The modules whose layer x layer CKA is measured for `source` (one figure each)."""
    if cfg.layer_similarity.modules:
        return list(cfg.layer_similarity.modules)
    captured = source.captured_suffixes()
    return list(captured) if captured else list(DEFAULT_SUFFIXES)


class _Activations:
    """One run's activations of the split, loaded once per step."""

    def __init__(self, source, modules: list[str], split: str):
        self.source, self.split = source, split
        self.n_layers = source.shape().n_layers
        self.request = LoadRequest()
        for layer in range(self.n_layers):
            for suffix in modules:
                self.request.add("activations", module_name(layer, suffix), split)
        self.loaded: dict[int, object] = {}

    def at(self, step: int):
        if step not in self.loaded:
            self.loaded = {step: self.source.load(step, self.request, "cpu")}
        return self.loaded[step]

    def tensor(self, step: int, suffix: str, layer: int):
        return self.at(step).tensor("activations", module_name(layer, suffix), self.split)

    def token_ids(self, step: int):
        data = self.at(step).splits.get(self.split)
        return data.token_ids if data is not None else None


def _measure(x, y, cfg: AnalysisConfig, seed: int, null: bool) -> dict:
    ls = cfg.layer_similarity
    try:
        if ls.permutations == 0 or not null:
            return {"cka": float(cka(x, y, debiased=ls.debiased))}
        r = cka_permutation_test(
            x, y, n_permutations=ls.permutations, debiased=ls.debiased, seed=seed
        )
    except MetricError as err:
        return {"cka": math.nan, "note": str(err)}
    return {
        "cka": r.value,
        "p_value": r.p_value,
        "null_low": r.null_low,
        "null_high": r.null_high,
        "null_mean": r.null_mean,
    }


def _pair(a: _Activations, b: _Activations, step, suffix, i, j, cfg, seed) -> LayerPair:
    base = dict(
        step=step,
        split=a.split,
        module=suffix,
        run_a=a.source.name,
        layer_a=i,
        run_b=b.source.name,
        layer_b=j,
    )
    try:
        x, y = a.tensor(step, suffix, i), b.tensor(step, suffix, j)
    except MissingData as err:
        return LayerPair(**base, cka=math.nan, note=f"missing: {err}")
    ids_a, ids_b = a.token_ids(step), b.token_ids(step)
    if a is not b and ids_a is not None and ids_b is not None and ids_a != ids_b:
        return LayerPair(
            **base,
            cka=math.nan,
            note=f"the '{a.split}' captures of the two runs are different batches (token ids "
            f"differ): the runs were trained on different data",
        )
    values = _measure(x, y, cfg, seed, null=a is not b)
    return LayerPair(**base, debiased=cfg.layer_similarity.debiased, **values)


def _selected(steps: list[int], choice) -> list[int]:
    if choice == "all":
        return list(steps)
    if choice == "last":
        return steps[-1:]
    return [s for s in steps if s in set(choice)]


def layer_similarity(
    sources: list, steps: dict[str, list[int]], cfg: AnalysisConfig, *, cross: bool
) -> list[LayerPair]:
    """Within-run matrices at the selected steps; with `cross`, matrices across runs (the first
    run, or ``compare.reference``, against each other) and same-index pairs at shared steps."""
    ls = cfg.layer_similarity
    if not ls.enabled:
        return []
    acts = [_Activations(s, modules_of(s, cfg), ls.split) for s in sources]
    names = [s.name for s in sources]
    ref = acts[names.index(cfg.compare.reference) if cfg.compare.reference in names else 0]
    shared = sorted(set.intersection(*(set(steps[n]) for n in names))) if cross else []
    matrix_steps = set(_selected(shared, ls.steps))
    chosen = {n: set(_selected(steps[n], ls.steps)) for n in names}
    for a in acts:  # a Hub run downloads the activation files it does not hold yet
        a.source.prepare(sorted(chosen[a.source.name] | set(shared)), a.request)
    pairs: list[LayerPair] = []
    seed = 0  # one permutation draw per pair, reproducible
    for step in sorted(set(shared).union(*chosen.values())):
        for a in acts:
            if step in chosen[a.source.name]:
                for suffix in modules_of(a.source, cfg):
                    for i in range(a.n_layers):
                        for j in range(i, a.n_layers):
                            seed += 1
                            pairs.append(_pair(a, a, step, suffix, i, j, cfg, seed))
            if a is ref or step not in shared:
                continue
            full = step in matrix_steps
            modules = [m for m in modules_of(ref.source, cfg) if m in modules_of(a.source, cfg)]
            for suffix in modules:
                for i in range(ref.n_layers):
                    for j in range(a.n_layers) if full else [i]:
                        if j < a.n_layers:
                            seed += 1
                            pairs.append(_pair(ref, a, step, suffix, i, j, cfg, seed))
    return pairs


def write_pairs(pairs: list[LayerPair], out_dir: Path) -> Path | None:
    """Save the pairs as CSV (one row per pair); None when there are none."""
    if not pairs:
        return None
    path = out_dir / CSV_NAME
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(LayerPair)])
        writer.writeheader()
        for p in pairs:
            writer.writerow(asdict(p))
    return path
