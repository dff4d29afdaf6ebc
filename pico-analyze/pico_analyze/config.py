"""The analysis configuration: YAML -> typed dataclasses, checked before any work.

Reads an ``analysis.yaml`` (or a dict; or nothing, for the default analysis) and writes a
validated :class:`AnalysisConfig`. Unknown keys, metrics, settings and component names are
errors that name the key and the nearest valid one. Example::

    steps: {start: 0, stop: 1000, every: 200}   # or a list [0, 500, 1000]; default: all
    layers: [0, 3]                               # default: all
    splits: [eval]                               # for activations and gradients
    target_step: last                            # comparative metrics: last | first | previous | N
    components:
      v_act: {type: simple, kind: activations, module: self_attn.v_proj}
      ov_w: {type: ov_circuit, kind: weights, heads: both}
    metrics:
      - {metric: cka, components: [v_act]}                       # label cka@last
      - {metric: cka, components: [v_act], settings: {debiased: false}}  # cka[debiased=False]@last
      - {metric: effective_rank, components: [ov_w, {type: simple, kind: weights,
                                                       module: mlp.down_proj}]}
    compare:                                     # `pico-analyze compare`: across runs
      metrics: [{metric: cka, components: [v_act]}]

Each metric entry has a label (``name``, default derived from metric, settings and target), so two
entries of one metric with different settings never overwrite each other.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pico_analyze.components import ComponentSpec
from pico_analyze.defaults import Default, default_compare_plan, default_plan
from pico_analyze.figure_options import FiguresConfig
from pico_analyze.metrics import get_metric, list_metrics
from pico_analyze.metrics.registry import UnknownMetricError
from pico_analyze.sources.original import SUFFIXES as ORIGINAL_SUFFIXES
from pico_format.yaml_file import YAMLFileError, did_you_mean, read_yaml

SPLIT_ALIASES = {"val": "eval", "validation": "eval"}
TARGETS = ("last", "first", "previous")


class ConfigError(ValueError):
    """An analysis configuration that cannot run: names the key and the fix."""


@dataclass
class StepRange:
    """Checkpoints with start <= step <= stop and (step - start) % every == 0."""

    start: int = 0
    stop: int | None = None
    every: int = 1

    def select(self, steps: list[int]) -> list[int]:
        return [
            s
            for s in steps
            if s >= self.start
            and (self.stop is None or s <= self.stop)
            and (s - self.start) % self.every == 0
        ]


@dataclass
class MetricEntry:
    """One metric applied to some components; `label` names its rows and plots."""

    metric: str
    name: str | None = None
    components: list[ComponentSpec] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    splits: list[str] | None = None  # None: the config's splits
    layers: list[int] | None = None  # None: the config's layers
    target: str | int | None = None  # comparative: last | first | previous | step

    @property
    def comparative(self) -> bool:
        return get_metric(self.metric).comparative

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        text = self.metric
        if self.settings:
            text += "[" + ",".join(f"{k}={v}" for k, v in sorted(self.settings.items())) + "]"
        if self.target is not None and self.comparative:
            text += f"@{self.target}"
        return text


@dataclass
class CompareConfig:
    """Cross-run comparisons (`pico-analyze compare`): metric(run A, run B) at each shared step."""

    metrics: list[MetricEntry] = field(default_factory=list)
    reference: str | None = None  # the run every other run is compared with; default the first


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "pico-analyze"
    entity: str | None = None
    name: str | None = None


@dataclass
class LayerSimilarityConfig:
    """Layer x layer CKA matrices (within a run, and across runs in compare) with a null."""

    enabled: bool = True
    steps: str | list[int] = "last"  # last | all | a list of steps
    split: str = "eval"
    modules: list[str] | None = None  # None: every captured module (activations)
    permutations: int = 100  # permutation null per cross-run value; 0 disables it
    debiased: bool = True


@dataclass
class AnalysisConfig:
    steps: list[int] | StepRange | None = None  # None: every checkpoint
    layers: list[int] | None = None  # None: every layer
    splits: list[str] = field(default_factory=lambda: ["eval"])
    target_step: str | int = "last"
    components: dict[str, ComponentSpec] = field(default_factory=dict)
    metrics: list[MetricEntry] = field(default_factory=list)
    compare: CompareConfig = field(default_factory=CompareConfig)
    force_train_split: bool = False  # allow comparing train captures of different batches
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # None: chosen from the CPU count and the number of checkpoints
    plots: bool = True
    progress: bool = True
    share_singular_values: bool = True  # one SVD per matrix for all spectral metrics
    report: bool = True  # report.md and a self-contained report.html
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    layer_similarity: LayerSimilarityConfig = field(default_factory=LayerSimilarityConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def select_steps(self, steps: list[int]) -> list[int]:
        if self.steps is None:
            return list(steps)
        if isinstance(self.steps, StepRange):
            return self.steps.select(steps)
        return [s for s in steps if s in set(self.steps)]


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def _check_keys(raw: Any, cls: type, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {raw!r}.")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{path}: unknown key '{key}'.{did_you_mean(key, names)}")
    return raw


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}.")
    return value


def _int_list(value: Any, path: str) -> list[int] | None:
    if value is None or value == "all":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of integers or 'all', got {value!r}.")
    return [_int(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _splits(value: Any, path: str) -> list[str] | None:
    if value is None:
        return None
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: expected a list of split names (train, eval), got {value!r}.")
    return [SPLIT_ALIASES.get(v, v) for v in value]


def _target(value: Any, path: str) -> str | int | None:
    if value is None or value in TARGETS:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{path}: expected one of {TARGETS} or a step number, got {value!r}.")


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(value: Any, path: str) -> str:
    """`value` if it names a device (auto, cpu, cuda, cuda:N, mps); else a ConfigError."""
    text = str(value)
    if text == "auto":
        return text
    try:
        kind = torch.device(text).type
    except (RuntimeError, ValueError, TypeError):
        kind = None
    if kind not in DEVICE_TYPES:
        raise ConfigError(f"{path}: '{text}' is not a device; use auto, cpu, cuda, cuda:N or mps.")
    return text


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}.")
    return value


def normalize_module(module: str) -> str:
    """Accept the original pico-train suffixes (attention.v_proj, swiglu.w_2) as ours."""
    return ORIGINAL_SUFFIXES.get(module, module)


def _component(raw: Any, path: str) -> ComponentSpec:
    raw = dict(_check_keys(raw, ComponentSpec, path))
    if raw.get("module") is not None:
        raw["module"] = normalize_module(str(raw["module"]))
    spec = ComponentSpec(**raw)
    problem = spec.validate()
    if problem:
        raise ConfigError(f"{path}: {problem}.")
    return spec


def _settings_of(metric: str) -> list[str]:
    """Keyword settings a metric function accepts (beyond its tensor arguments)."""
    spec = get_metric(metric)
    params = list(inspect.signature(spec.fn).parameters.values())
    skip = 2 if spec.comparative else 1
    return [p.name for p in params[skip:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _entry(raw: Any, path: str, components: dict[str, ComponentSpec]) -> MetricEntry:
    raw = _check_keys(raw, MetricEntry, path)
    if "metric" not in raw:
        raise ConfigError(f"{path}: missing `metric` (one of {', '.join(list_metrics())}).")
    try:
        spec = get_metric(raw["metric"])
    except UnknownMetricError as err:
        raise ConfigError(f"{path}.metric: {err}") from None
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}.settings: expected a mapping, got {settings!r}.")
    valid = _settings_of(spec.name)
    for key in settings:
        if key not in valid:
            hint = did_you_mean(key, valid) if valid else " It takes no settings."
            raise ConfigError(f"{path}.settings: '{key}' is not a setting of {spec.name}.{hint}")
    comps = raw.get("components")
    if comps is None:
        raise ConfigError(
            f"{path}: missing `components` (names from `components:` or inline "
            f"mappings such as {{type: simple, kind: weights, module: "
            f"mlp.down_proj}})."
        )
    comps = [comps] if isinstance(comps, (str, dict)) else comps
    if not isinstance(comps, list):
        raise ConfigError(f"{path}.components: expected a list, got {comps!r}.")
    resolved = []
    for i, c in enumerate(comps):
        where = f"{path}.components[{i}]"
        if isinstance(c, str):
            if c not in components:
                raise ConfigError(
                    f"{where}: no component named '{c}'.{did_you_mean(c, list(components))}"
                )
            c = components[c]
        else:
            c = _component(c, where)
        if c.kind not in spec.kinds:
            raise ConfigError(
                f"{where}: {spec.name} measures {', '.join(spec.kinds)}, not {c.kind}."
            )
        resolved.append(c)
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected a string, got {name!r}.")
    return MetricEntry(
        metric=spec.name,
        name=name,
        components=resolved,
        settings=dict(settings),
        splits=_splits(raw.get("splits"), f"{path}.splits"),
        layers=_int_list(raw.get("layers"), f"{path}.layers"),
        target=_target(raw.get("target"), f"{path}.target"),
    )


FIGURE_FORMATS, X_AXES, STEP_SCALES = (
    ("png", "pdf", "svg"),
    ("step", "tokens"),
    (
        "auto",
        "linear",
        "symlog",
    ),
)


def _choice(value: Any, options: tuple, path: str) -> str:
    if value not in options:
        raise ConfigError(f"{path}: '{value}' is not one of {', '.join(options)}.")
    return value


def figures_from(raw: Any) -> FiguresConfig:
    """A validated FiguresConfig from a mapping (keys of `figures:`)."""
    if isinstance(raw, FiguresConfig):
        return raw
    raw = _check_keys(raw, FiguresConfig, "figures")
    out = FiguresConfig()
    if "formats" in raw:
        formats = [raw["formats"]] if isinstance(raw["formats"], str) else raw["formats"]
        if not isinstance(formats, list) or not formats:
            raise ConfigError(f"figures.formats: expected a list of {FIGURE_FORMATS}.")
        out.formats = [_choice(f, FIGURE_FORMATS, "figures.formats") for f in formats]
    if "dpi" in raw:
        out.dpi = _int(raw["dpi"], "figures.dpi")
        if not 20 <= out.dpi <= 1200:
            raise ConfigError(f"figures.dpi: {out.dpi} is outside 20..1200.")
    if "x_axis" in raw:
        out.x_axis = _choice(raw["x_axis"], X_AXES, "figures.x_axis")
    if "step_scale" in raw:
        out.step_scale = _choice(raw["step_scale"], STEP_SCALES, "figures.step_scale")
    if "normalize_previous" in raw:
        out.normalize_previous = _bool(raw["normalize_previous"], "figures.normalize_previous")
    return out


def _layer_similarity(raw: Any) -> LayerSimilarityConfig:
    raw = _check_keys(raw, LayerSimilarityConfig, "layer_similarity")
    out = LayerSimilarityConfig()
    for key in ("enabled", "debiased"):
        if key in raw:
            setattr(out, key, _bool(raw[key], f"layer_similarity.{key}"))
    if "steps" in raw:
        steps = raw["steps"]
        out.steps = (
            steps if steps in ("last", "all") else _int_list(steps, "layer_similarity.steps")
        )
    if "split" in raw:
        out.split = (_splits(raw["split"], "layer_similarity.split") or ["eval"])[0]
    if raw.get("modules") is not None:
        mods = [raw["modules"]] if isinstance(raw["modules"], str) else raw["modules"]
        out.modules = [normalize_module(str(m)) for m in mods]
    if "permutations" in raw:
        out.permutations = _int(raw["permutations"], "layer_similarity.permutations")
        if out.permutations < 0:
            raise ConfigError("layer_similarity.permutations: must be 0 (off) or positive.")
    return out


def _entries(raw: Any, path: str, components: dict[str, ComponentSpec]) -> list[MetricEntry]:
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of metric entries, got {raw!r}.")
    return [_entry(r, f"{path}[{i}]", components) for i, r in enumerate(raw)]


def _default_entries(plan: list[Default]) -> list[MetricEntry]:
    return [MetricEntry(metric=m, components=c, splits=s, target=t) for m, c, s, t in plan]


def default_metrics(captured: list[str] | None = None) -> list[MetricEntry]:
    """The analysis `pico-analyze run` does with no config (see :func:`defaults.default_plan`)."""
    return _default_entries(default_plan(captured))


def default_compare_metrics(captured: list[str] | None = None) -> list[MetricEntry]:
    """What `pico-analyze compare` measures across runs with no config."""
    return _default_entries(default_compare_plan(captured))


def config_from_dict(
    raw: dict[str, Any] | None, captured: list[str] | None = None
) -> AnalysisConfig:
    """Build and validate a config; missing `metrics` means the default analysis."""
    raw = _check_keys(raw or {}, AnalysisConfig, "config")
    cfg = AnalysisConfig()
    if "steps" in raw:
        steps = raw["steps"]
        if isinstance(steps, dict):
            r = _check_keys(steps, StepRange, "steps")
            cfg.steps = StepRange(
                **{k: _int(v, f"steps.{k}") if v is not None else None for k, v in r.items()}
            )
            if cfg.steps.every < 1:
                raise ConfigError("steps.every: must be at least 1.")
        else:
            cfg.steps = _int_list(steps, "steps")
    cfg.layers = _int_list(raw.get("layers"), "layers")
    cfg.splits = _splits(raw.get("splits"), "splits") or cfg.splits
    cfg.target_step = _target(raw.get("target_step", cfg.target_step), "target_step")
    for key in ("force_train_split", "plots", "progress", "share_singular_values", "report"):
        if key in raw:
            setattr(cfg, key, _bool(raw[key], key))
    if "device" in raw:
        cfg.device = check_device(raw["device"], "device")
    if raw.get("workers") is not None:
        cfg.workers = _int(raw["workers"], "workers")
    if "wandb" in raw:
        cfg.wandb = WandbConfig(**_check_keys(raw["wandb"], WandbConfig, "wandb"))
    if raw.get("figures") is not None:
        cfg.figures = figures_from(raw["figures"])
    if raw.get("layer_similarity") is not None:
        cfg.layer_similarity = _layer_similarity(raw["layer_similarity"])
    comps = raw.get("components") or {}
    if not isinstance(comps, dict):
        raise ConfigError(f"components: expected a mapping of name -> component, got {comps!r}.")
    cfg.components = {str(k): _component(v, f"components.{k}") for k, v in comps.items()}
    if "metrics" in raw:
        cfg.metrics = _entries(raw["metrics"], "metrics", cfg.components)
    else:
        cfg.metrics = default_metrics(captured)
    compare = _check_keys(raw.get("compare") or {}, CompareConfig, "compare")
    cfg.compare = CompareConfig(
        metrics=(
            _entries(compare["metrics"], "compare.metrics", cfg.components)
            if "metrics" in compare
            else default_compare_metrics(captured)
        ),
        reference=compare.get("reference"),
    )
    for i, e in enumerate(cfg.compare.metrics):
        if not e.comparative:
            raise ConfigError(
                f"compare.metrics[{i}]: {e.metric} is not comparative; cross-run "
                f"comparisons need a metric of two inputs (e.g. cka)."
            )
    validate(cfg)
    return cfg


def _read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax or encoding error is one line naming the file and line."""
    try:
        return read_yaml(path)
    except YAMLFileError as err:
        raise ConfigError(str(err)) from None


def load_config(
    source: str | Path | dict | AnalysisConfig | None,
    captured: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> AnalysisConfig:
    """A config from a YAML path, a dict, an AnalysisConfig or None (the default analysis).

    `overrides` (top-level keys, e.g. from the command line) replace the file's values before
    validation.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(source, AnalysisConfig):
        cfg = dataclasses.replace(source)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        validate(cfg)
        return cfg
    where = ""
    if source is None or isinstance(source, dict):
        raw = dict(source or {})
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist.")
        raw = _read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}.")
        where = f"{path}: "
    try:
        return config_from_dict({**raw, **overrides}, captured)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def validate(cfg: AnalysisConfig) -> None:
    """Whole-config checks: the device, targets, the train-split guard, label collisions."""
    cfg.device = check_device(cfg.device, "device")
    seen: dict[str, tuple[int, set[str]]] = {}
    for i, e in enumerate(cfg.metrics):
        if e.comparative and e.target is None:
            e.target = cfg.target_step
        splits = e.splits or cfg.splits
        crosses_steps = e.comparative and any(c.split_dependent for c in e.components)
        if crosses_steps and "train" in splits and not cfg.force_train_split:
            raise ConfigError(
                f"metrics[{i}] ({e.label}) compares the 'train' split across steps, but the "
                f"train capture is a different batch at every step, so the comparison measures "
                f"the data change as much as the model change. Use splits: [eval] (the same "
                f"held-out batch at every step), or force it with force_train_split: true "
                f"(--force-train-split)."
            )
        keys = {c.key for c in e.components}
        if e.label in seen and seen[e.label][1] & keys:
            raise ConfigError(
                f"metrics[{seen[e.label][0]}] and metrics[{i}] both write '{e.label}' for "
                f"{', '.join(sorted(seen[e.label][1] & keys))}; give one of them a `name`."
            )
        first, prev = seen.get(e.label, (i, set()))
        seen[e.label] = (first, prev | keys)


def config_to_dict(cfg: AnalysisConfig) -> dict[str, Any]:
    """Plain data for writing the resolved config beside the results."""

    def entry(e: MetricEntry) -> dict[str, Any]:
        return {
            "metric": e.metric,
            "name": e.label,
            "settings": e.settings,
            "components": [dataclasses.asdict(c) for c in e.components],
            "splits": e.splits,
            "layers": e.layers,
            "target": e.target,
        }

    steps = dataclasses.asdict(cfg.steps) if isinstance(cfg.steps, StepRange) else cfg.steps
    return {
        "steps": steps,
        "layers": cfg.layers,
        "splits": cfg.splits,
        "target_step": cfg.target_step,
        "force_train_split": cfg.force_train_split,
        "figures": dataclasses.asdict(cfg.figures),
        "layer_similarity": dataclasses.asdict(cfg.layer_similarity),
        "metrics": [entry(e) for e in cfg.metrics],
        "compare": {
            "metrics": [entry(e) for e in cfg.compare.metrics],
            "reference": cfg.compare.reference,
        },
    }
