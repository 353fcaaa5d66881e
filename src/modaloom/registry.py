"""One registry for every named, pluggable part: kind -> name -> class.

Kinds used across the package: "embedding" (embedding parts), "encoder", "decoder", "target", "loss",
"processor", "tokenizer", "optimizer", "scheduler", "task". Modules register themselves with
``@register(kind, name)``; configs refer to them by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from modaloom.errors import ConfigError, choices_text, nearest

T = TypeVar("T")

_REGISTRY: dict[str, dict[str, Any]] = {}

# Packages whose import registers the built-in parts of each kind, imported lazily on first lookup.
_BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "embedding": ("modaloom.embeddings",),
    "encoder": ("modaloom.encoders",),
    "decoder": ("modaloom.decoders",),
    "target": ("modaloom.targets",),
    "loss": ("modaloom.losses",),
    "processor": ("modaloom.data.processors",),
    "tokenizer": ("modaloom.data.tokenizers",),
    "optimizer": ("modaloom.train.optim",),
    "scheduler": ("modaloom.train.schedules",),
    "task": ("modaloom.tasks",),
}


def register(kind: str, name: str, *aliases: str) -> Callable[[T], T]:
    """Class decorator adding ``obj`` to the registry under ``kind``/``name`` (and any aliases)."""

    def wrap(obj: T) -> T:
        table = _REGISTRY.setdefault(kind, {})
        for key in (name, *aliases):
            if key in table and table[key] is not obj:
                raise RuntimeError(f"{kind} {key!r} registered twice: {table[key]} and {obj}")
            table[key] = obj
        return obj

    return wrap


def _load_builtins(kind: str) -> None:
    for module in _BUILTIN_MODULES.get(kind, ()):
        importlib.import_module(module)


def names(kind: str) -> list[str]:
    """All registered names of a kind, sorted."""
    _load_builtins(kind)
    return sorted(_REGISTRY.get(kind, {}))


def get(kind: str, name: str, where: str = "") -> Any:
    """Look up a registered part; an unknown name raises ConfigError listing the valid ones."""
    _load_builtins(kind)
    table = _REGISTRY.get(kind, {})
    if name not in table:
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}unknown {kind} {name!r}{nearest(name, table)}; valid choices: {choices_text(table)}"
        )
    return table[name]
