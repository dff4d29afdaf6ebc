"""pico-analyze: learning-dynamics metrics over Pico (and original pico-train) checkpoints.

The pipeline, one module per stage: ``load`` (+ ``sources/``) -> ``components`` -> ``metrics/``
-> ``runner`` -> ``table`` -> ``plots`` / ``report``; ``config`` holds the analysis YAML,
``analyze`` runs it all, ``cli`` is the ``pico-analyze`` command.
"""

__version__ = "0.1.0"
__all__ = ["AnalysisResult", "analyze_run", "compare_runs", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import pico_analyze.metrics` does not pull in plotting and the runner.
    if name == "AnalysisResult":
        from pico_analyze.result import AnalysisResult

        return AnalysisResult
    if name in ("analyze_run", "compare_runs"):
        from pico_analyze import analyze

        return getattr(analyze, name)
    raise AttributeError(f"module 'pico_analyze' has no attribute {name!r}")
