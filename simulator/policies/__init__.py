"""Policies, registered by name. A new policy is one file in this folder with ``@register``.

    from simulator.policies import make
    policy = make("stop_absolute", {"theta": "1.2", "k": "8"})
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import typing
from collections.abc import Mapping
from typing import Any

from ..errors import PolicyError
from .base import RULE_INDEX, Context, Outcome, Plan, Policy, Signals

__all__ = ["Context", "Outcome", "Plan", "Policy", "RULE_INDEX", "Signals", "REGISTRY",
           "register", "make", "names"]

REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` available as ``--policy cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"policy name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


@functools.cache
def _hints(name: str) -> dict[str, Any]:
    return typing.get_type_hints(REGISTRY[name])


def _convert(policy: str, field: dataclasses.Field, value: Any) -> Any:
    typ = _hints(policy)[field.name]
    if not isinstance(value, str):
        return value
    try:
        if typ is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        if typ == tuple[float, ...]:
            return tuple(float(x) for x in value.split(",") if x)
        if typ == tuple[str, ...]:
            return tuple(x for x in value.split(",") if x)
        return str(value)
    except ValueError:
        raise PolicyError(f"policy {policy}: parameter {field.name}={value!r} is not a "
                          f"valid {getattr(typ, '__name__', typ)}") from None


def make(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    """Build policy ``name`` from parameters (strings are converted to the field types)."""
    _load_all()
    if name not in REGISTRY:
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in (params or {}).items():
        if key not in fields:
            raise PolicyError(f"policy {name}: unknown parameter {key!r}; it takes "
                              f"{', '.join(fields) or 'no parameters'}")
        kwargs[key] = _convert(name, fields[key], value)
    try:
        policy = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy {name}: {exc}") from None
    return policy


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


_LOADED = False


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True
