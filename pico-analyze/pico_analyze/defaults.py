"""The default analysis: what `pico-analyze run` and `compare` measure with no config.

Reads the block-module suffixes a run captured (when known) and the metric registry; writes the
default plan as :data:`Default` tuples (metric, components, splits, target), which
:mod:`pico_analyze.config` turns into metric entries when a config has no `metrics` (or
`compare.metrics`). Metric names missing from the registry are skipped.
"""

from __future__ import annotations

from pico_analyze.components import ComponentSpec
from pico_analyze.metrics import list_metrics
from pico_format.modules import DEFAULT_CAPTURE_SUFFIXES as DEFAULT_SUFFIXES
from pico_format.modules import RESIDUAL


def _simple(kind: str, suffixes: list[str]) -> list[ComponentSpec]:
    return [ComponentSpec("simple", kind, s) for s in suffixes]


def _modules(captured: list[str] | None) -> tuple[list[str], list[str]]:
    """(suffixes with activations, suffixes with weights and gradients) to analyse."""
    if not captured:
        return list(DEFAULT_SUFFIXES), list(DEFAULT_SUFFIXES)
    return list(captured), [s for s in captured if s != RESIDUAL]


# One default entry: (metric, components, splits (None: the config's), target (comparative)).
Default = tuple[str, list[ComponentSpec], list[str] | None, str | None]


def default_plan(captured: list[str] | None = None) -> list[Default]:
    """The analysis `pico-analyze run` does with no config.

    Eval-split activations of each captured module (and of the residual stream, when captured):
    CKA against the final checkpoint, effective rank and proportional effective rank. Weights:
    effective rank, condition number, Gini, Hoyer, Frobenius and spectral norms, relative change
    since the previous checkpoint. Gradients (train and eval): Frobenius norm; eval gradients:
    cosine similarity with the previous checkpoint's (train batches differ between steps, so
    their gradients are not compared across steps). OV circuit weights per head: effective rank
    and Frobenius norm. `captured`: the block-module suffixes the run holds (None: unknown, the
    pico-train defaults v_proj, o_proj, down_proj are assumed).
    """
    act_mods, param_mods = _modules(captured)
    acts = _simple("activations", act_mods)
    weights, grads = _simple("weights", param_mods), _simple("gradients", param_mods)
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
    return [entry for entry in plan if entry[0] in registered]


def default_compare_plan(captured: list[str] | None = None) -> list[Default]:
    """Cross-run default: debiased CKA of each captured module's eval activations."""
    return [("cka", _simple("activations", _modules(captured)[0]), ["eval"], None)]
