"""Learning-dynamics metrics as plain torch functions (tensors in, python float out).

Importing this package registers every metric; look them up by name with
:func:`get_metric` / :func:`list_metrics`, or call the functions directly::

    from pico_analyze.metrics import cka, effective_rank, get_metric
    cka(acts_step0, acts_step1000)                      # debiased linear CKA
    get_metric("effective_rank")(weight)

Families: :mod:`.similarity` (comparative: CKA, SVCCA, PWCCA, Procrustes), :mod:`.spectral`
(effective rank, PER, stable rank, condition number), :mod:`.sparsity` (Gini, Hoyer),
:mod:`.norms` (Frobenius, nuclear, spectral), :mod:`.dynamics` (relative weight change,
gradient cosine similarity). Metrics raise :class:`MetricError` when an input cannot be
measured.
"""

from .dynamics import gradient_cosine_similarity, relative_weight_change
from .norms import frobenius_norm, nuclear_norm, spectral_norm
from .registry import (
    KINDS,
    MetricError,
    MetricSpec,
    UnknownMetricError,
    get_metric,
    list_metrics,
    register_metric,
    unregister_metric,
)
from .similarity import canonical_correlations, cka, procrustes_distance, pwcca, svcca
from .sparsity import gini, hoyer
from .spectral import condition_number, effective_rank, proportional_effective_rank, stable_rank

__all__ = [
    "KINDS",
    "MetricError",
    "MetricSpec",
    "UnknownMetricError",
    "canonical_correlations",
    "cka",
    "condition_number",
    "effective_rank",
    "frobenius_norm",
    "get_metric",
    "gini",
    "gradient_cosine_similarity",
    "hoyer",
    "list_metrics",
    "nuclear_norm",
    "procrustes_distance",
    "proportional_effective_rank",
    "pwcca",
    "register_metric",
    "relative_weight_change",
    "spectral_norm",
    "stable_rank",
    "svcca",
    "unregister_metric",
]
