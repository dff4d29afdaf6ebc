"""The default analysis: what `pico-analyze run` and `compare` measure with no config.

Reads the block-module suffixes a run captured (when known) and the metric registry; writes the
:class:`~pico_analyze.config.MetricEntry` list used when a config has no `metrics` (or
`compare.metrics`). Metric names missing from the registry are skipped.
"""

from __future__ import annotations

from pico_analyze.components import ComponentSpec
from pico_analyze.config import MetricEntry
from pico_analyze.load import DEFAULT_SUFFIXES
from pico_analyze.metrics import list_metrics


def _simple(kind: str, suffixes: list[str]) -> list[ComponentSpec]:
    return [ComponentSpec("simple", kind, s) for s in suffixes]


def default_metrics(captured: list[str] | None = None) -> list[MetricEntry]:
    """The analysis `pico-analyze run` does with no config (see the README of pico-analyze).

    Eval-split activations of each captured module: CKA against the final checkpoint, effective
    rank and proportional effective rank. Weights: effective rank, condition number, Gini, Hoyer,
    Frobenius and spectral norms, relative change since the previous checkpoint. Gradients
    (train and eval): Frobenius norm; eval gradients: cosine similarity with the previous
    checkpoint's. OV circuit weights per head: effective rank and Frobenius norm.
    """
    suffixes = [s for s in DEFAULT_SUFFIXES if captured is None or s in captured] or list(
        DEFAULT_SUFFIXES
    )
    acts, weights, grads = (_simple(k, suffixes) for k in ("activations", "weights", "gradients"))
    ov = [ComponentSpec("ov_circuit", "weights", heads="per_head")]
    eval_only, both = ["eval"], ["train", "eval"]
    plan = [
        ("cka", acts, eval_only, "last"),
        ("effective_rank", acts + weights + ov, eval_only, None),
        ("proportional_effective_rank", acts, eval_only, None),
        ("condition_number", weights, None, None),
        ("gini", weights, None, None),
        ("hoyer", weights, None, None),
        ("frobenius_norm", weights + grads + ov, both, None),
        ("spectral_norm", weights, None, None),
        ("relative_weight_change", weights, None, "previous"),
        ("gradient_cosine_similarity", grads, eval_only, "previous"),
    ]
    registered = set(list_metrics())
    return [
        MetricEntry(metric=m, components=c, splits=s, target=t)
        for m, c, s, t in plan
        if m in registered
    ]


def default_compare_metrics(captured: list[str] | None = None) -> list[MetricEntry]:
    """Cross-run default: debiased CKA of each captured module's eval activations."""
    suffixes = [s for s in DEFAULT_SUFFIXES if captured is None or s in captured] or list(
        DEFAULT_SUFFIXES
    )
    return [
        MetricEntry(
            metric="cka", components=_simple("activations", suffixes), splits=["eval"], target=None
        )
    ]
