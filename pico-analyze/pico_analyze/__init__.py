"""pico-analyze: learning-dynamics metrics over Pico (and original pico-train) checkpoints.

The pipeline, one module per stage: ``load`` (+ ``sources/``) -> ``components`` -> ``metrics/``
-> ``runner`` -> ``table`` (+ ``scores``: loss and benchmark rows) -> ``plots`` / ``report``;
``config`` holds the analysis YAML, ``analyze`` runs it all, ``cli`` is the ``pico-analyze``
command and ``notebook`` the DataFrame API for notebooks::

    import pico_analyze as pa
    df = pa.run("runs/demo")              # results as a pandas DataFrame (pa.compare: several)
    pa.load_log("runs/demo"); pa.load_eval("runs/demo"); pa.read_capture(ckpt, "eval")
"""

__version__ = "0.1.0"

_ANALYZE = ("analyze_run", "compare_runs")
_NOTEBOOK = (
    "run",
    "compare",
    "load_results",
    "load_layer_similarity",
    "load_log",
    "load_eval",
    "load_benchmarks",
    "checkpoints",
    "read_capture",
    "results_frame",
)
__all__ = ["AnalysisResult", *_ANALYZE, *_NOTEBOOK, "__version__"]


def __getattr__(name: str):
    # Lazy, so `import pico_analyze.metrics` does not pull in plotting, pandas and the runner.
    if name == "AnalysisResult":
        from pico_analyze.result import AnalysisResult

        return AnalysisResult
    if name in _ANALYZE:
        from pico_analyze import analyze

        return getattr(analyze, name)
    if name in _NOTEBOOK:
        from pico_analyze import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'pico_analyze' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Tab completion lists the public API (the lazy names too)."""
    return sorted(set(globals()) | set(__all__))
