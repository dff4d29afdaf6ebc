"""Compare's up-front checks: are these runs comparable at all?

Reads each run's identity (``run.json``: data fingerprint, code version) and resolved training
config (``config.yaml``) through ``pico_format``, and the checkpoint steps of each source; writes
nothing. Returns warnings (one line each, naming what differs) that ``compare`` logs before any
tensor is loaded and repeats in the report. Cross-run similarity is computed on the shared eval
batch; when the data fingerprints differ that batch is not the same text in every run, and the
runner then refuses those values (token ids differ).
"""

from __future__ import annotations

import yaml

from pico_format import RunFormatError, RunPaths, read_run_info
from pico_format.yaml_file import config_differences

DATA_KEYS_SHOWN = 6


def _identity(source) -> tuple[str | None, dict]:
    """(data fingerprint, config mapping) of a pico run, else (None, {})."""
    root = getattr(source, "root", None)
    if root is None:
        return None, {}
    run = RunPaths(root)
    fingerprint = None
    try:
        if run.info.is_file():
            fingerprint = read_run_info(run).data_fingerprint
        config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    except (RunFormatError, yaml.YAMLError, OSError):
        return fingerprint, {}
    return fingerprint, config if isinstance(config, dict) else {}


def compare_warnings(sources) -> list[str]:
    """One line per problem that makes a cross-run comparison questionable."""
    warnings = []
    ids = [(s.name, *_identity(s)) for s in sources]
    ref_name, ref_fp, ref_config = ids[0]
    for name, fp, config in ids[1:]:
        if fp is None or ref_fp is None or fp == ref_fp:
            continue
        diffs = config_differences(ref_config, config, sections=("data",), between="vs")
        what = "; ".join(diffs[:DATA_KEYS_SHOWN]) if diffs else "tokenizer or corpus contents"
        if len(diffs) > DATA_KEYS_SHOWN:
            what += f"; and {len(diffs) - DATA_KEYS_SHOWN} more"
        warnings.append(
            f"runs '{ref_name}' and '{name}' were trained on different data (data fingerprint "
            f"{ref_fp} vs {fp}; {what}): their eval batches differ, so cross-run similarity "
            f"is refused and their metrics are not directly comparable."
        )
    unknown = [n for n, fp, _ in ids if fp is None]
    if unknown and len(unknown) < len(ids):
        warnings.append(
            f"no data fingerprint for {', '.join(repr(n) for n in unknown)} (not pico runs): "
            f"cannot check that all runs saw the same data."
        )
    steps = {s.name: set(s.steps()) for s in sources}
    shared = set.intersection(*steps.values())
    if not shared:
        warnings.append("the runs share no checkpoint step: no cross-run similarity is possible.")
    else:
        only = {n: sorted(st - shared) for n, st in steps.items() if st - shared}
        if only:
            listed = "; ".join(
                f"{n}: {v[:6]}{' ...' if len(v) > 6 else ''}" for n, v in only.items()
            )
            warnings.append(
                f"checkpoint steps differ between runs; cross-run similarity uses the "
                f"{len(shared)} shared steps only (not shared: {listed})."
            )
    return warnings
