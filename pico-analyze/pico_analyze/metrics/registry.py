"""A small registry of named metrics.

Adding a metric is one function plus one decorator line::

    @register_metric("my_metric", comparative=False, kinds=("weights",))
    def my_metric(x: torch.Tensor) -> float:
        '''One-line description used when ``description`` is not given.'''
        ...

Single-input metrics take one tensor; comparative metrics take two (e.g. the same layer at two
checkpoints). Settings are keyword-only arguments. Metrics raise :class:`MetricError` when an
input cannot be measured.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "MetricError",
    "MetricSpec",
    "UnknownMetricError",
    "get_metric",
    "list_metrics",
    "register_metric",
    "unregister_metric",
]

#: The kinds of tensors a metric can be applied to.
KINDS: tuple[str, ...] = ("activations", "weights", "gradients")


class MetricError(ValueError):
    """An input cannot be measured by a metric.

    Raised for too few samples, more features than samples (CCA family), a rank-deficient
    matrix (condition number), NaN/Inf or empty inputs, mismatched shapes... The message says
    what is wrong and what would fix it.
    """


class UnknownMetricError(KeyError):
    """``get_metric`` was given a name that is not registered (a :class:`KeyError`)."""

    def __str__(self) -> str:  # KeyError's default str() shows the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its name, function, and what it applies to.

    ``comparative`` metrics take two tensors ``fn(x, y, **settings)``; the others take one,
    ``fn(x, **settings)``. ``kinds`` lists the tensor kinds (see :data:`KINDS`) it is meant for.
    Calling the spec calls the function.
    """

    name: str
    fn: Callable[..., Any]
    comparative: bool
    kinds: tuple[str, ...]
    description: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


_REGISTRY: dict[str, MetricSpec] = {}


def _first_doc_line(fn: Callable[..., Any]) -> str:
    """The docstring's first sentence, whole even when it wraps over several lines."""
    doc = (fn.__doc__ or "").strip()
    paragraph = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`])", paragraph, maxsplit=1)[0]


def register_metric(
    name: str,
    *,
    comparative: bool,
    kinds: tuple[str, ...] = KINDS,
    description: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged.

    ``description`` defaults to the first line of the function's docstring. Registering a
    different function under a name already taken raises ``ValueError`` (re-registering the
    same function, e.g. on module reload, replaces the entry).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(
            f"metric {name!r}: kinds must be a non-empty subset of {KINDS}, got {kinds!r}"
        )

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _REGISTRY.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(
                f"metric {name!r} is already registered (by {old.fn.__module__}."
                f"{old.fn.__qualname__}); choose another name or unregister_metric({name!r})"
            )
        _REGISTRY[name] = MetricSpec(
            name=name,
            fn=fn,
            comparative=bool(comparative),
            kinds=kinds,
            description=description or _first_doc_line(fn),
        )
        return fn

    return decorator


def unregister_metric(name: str) -> None:
    """Remove ``name`` from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def get_metric(name: str) -> MetricSpec:
    """Return the :class:`MetricSpec` registered under ``name``.

    Raises :class:`UnknownMetricError` (a ``KeyError``) naming the unknown metric and the
    closest registered names.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownMetricError(
        f"unknown metric {name!r}.{hint} Registered metrics: {', '.join(names) or '(none)'}."
    )


def list_metrics(*, comparative: bool | None = None, kind: str | None = None) -> list[str]:
    """Sorted names of registered metrics, optionally filtered by ``comparative`` and ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return sorted(
        spec.name
        for spec in _REGISTRY.values()
        if (comparative is None or spec.comparative == comparative)
        and (kind is None or kind in spec.kinds)
    )
