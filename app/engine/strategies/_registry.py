"""Strategy registry, as timm registers models: a decorator fills a dict, factories read it."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from app.engine.errors import EngineError
from app.engine.strategies._base import Strategy

S = TypeVar("S", bound=type[Strategy])

_strategies: dict[str, type[Strategy]] = {}


def register_strategy(name: str, summary: str = "") -> Callable[[S], S]:
    """Register a strategy class under ``name``; ``summary`` is one line for users (GET
    /v1/strategies)."""

    def decorator(cls: S) -> S:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"strategy {name!r} must be a dataclass; its fields are its options")
        if name in _strategies and _strategies[name] is not cls:
            warnings.warn(
                f"strategy {name!r} is registered twice; {cls.__qualname__} replaces "
                f"{_strategies[name].__qualname__}",
                stacklevel=2,
            )
        cls.name = name
        cls.summary = summary
        _strategies[name] = cls
        return cls

    return decorator


def list_strategies(
    *, needs_target: bool | None = None, uses_target_labeled: bool | None = None
) -> list[str]:
    """Registered strategy names; ``needs_target`` keeps only those that do (or do not) train
    with target-domain images, ``uses_target_labeled`` those that do (or do not) put labelled
    target images into their loss."""
    return sorted(
        name
        for name, cls in _strategies.items()
        if (needs_target is None or cls.needs_target == needs_target)
        and (uses_target_labeled is None or cls.uses_target_labeled == uses_target_labeled)
    )


def _get(name: str) -> type[Strategy]:
    try:
        return _strategies[name]
    except KeyError:
        raise EngineError(
            f"Unknown strategy {name!r}; valid strategies are: {', '.join(list_strategies())}."
        ) from None


def strategy_option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_get(name))]  # type: ignore[arg-type]


def strategy_summary(name: str) -> str:
    return _get(name).summary


def strategy_defaults(name: str) -> dict[str, Any]:
    """Each option's default as JSON would carry it (tuples as lists); None where the engine
    chooses from the job (e.g. lp_ft's probe_epochs: half of epochs)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(_get(name)):  # type: ignore[arg-type]
        value = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def create_strategy(name: str, **options: Any) -> Strategy:
    cls = _get(name)
    valid = strategy_option_names(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        choices = ", ".join(valid) if valid else "none"
        raise EngineError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for strategy {name!r}; "
            f"valid options are: {choices}."
        )
    return cls(**options)
