"""HF families: one object per architecture family, registered under the HF ``model_type``s it handles.

How to add a family (a new file in this package is picked up automatically):

1. Subclass ``HFFamily``; set ``model_types`` (e.g. ``("bert",)``), ``architectures`` (HF class name ->
   a short description of the heads it carries) and ``base_architecture`` (the headless class).
2. ``to_modaloom_config(hf_config, architecture)``: an HF config -> ``ModelConfig`` (raise ConfigError for
   options modaloom cannot reproduce, naming the option).
3. ``to_hf_config(cfg, architecture)``: the reverse; collect what does not fit in a ``Needs`` and call
   ``needs.check()`` so that one error lists every mismatch.
4. ``architecture_for(cfg)``: the HF class to export a model to, from its targets.
5. ``mapping(cfg, architecture)``: a ``Mapping`` assembled from module-level tables of ``Rule``s (keys
   written with the base-model prefix, e.g. ``bert.embeddings...``, even for headless checkpoints;
   the converter adds or strips the prefix).
6. Call ``register_family(MyFamily())`` at module level, and add a parity test under tests/interop/.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from modaloom.errors import ConfigError, choices_text, nearest
from modaloom.interop.hf.mapping import Mapping
from modaloom.model_config import ModelConfig

_FAMILIES: dict[str, HFFamily] = {}
_FRAMEWORK_MODULES = {"mapping", "family", "convert"}
_BROKEN: dict[str, str] = {}  # family module -> why it failed to import (reported when its type is asked for)

# HF activation name -> ours, and ours -> the HF name that computes the same function.
HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_fast", "gelu_pytorch_tanh": "gelu_fast",
    "relu": "relu", "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu", "tanh": "tanh",
}
OUR_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu",
    "swish": "silu", "quick_gelu": "quick_gelu", "tanh": "tanh",
}


def activation_from_hf(name: Any, option: str) -> str:
    if not isinstance(name, str) or name not in HF_ACTIVATIONS:
        raise ConfigError(
            f"HF option {option}={name!r} is not supported; valid choices: {choices_text(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


class Needs:
    """Collects the ways a modaloom config differs from what an HF family can express."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.problems: list[str] = []

    def equal(self, key: str, value: Any, expected: Any) -> None:
        if value != expected:
            self.problems.append(f"{key} is {value!r} (needs {expected!r})")

    def true(self, condition: bool, message: str) -> None:
        if not condition:
            self.problems.append(message)

    def check(self) -> None:
        if self.problems:
            raise ConfigError(f"cannot express this model as {self.what}: " + "; ".join(self.problems))


class HFFamily:
    """Config translation and key tables for one HF architecture family."""

    model_types: tuple[str, ...] = ()
    architectures: dict[str, str] = {}
    base_architecture: str = ""

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        raise NotImplementedError

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        raise NotImplementedError

    def architecture_for(self, cfg: ModelConfig) -> str:
        raise NotImplementedError

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        raise NotImplementedError

    def check_architecture(self, architecture: str) -> None:
        if architecture not in self.architectures:
            raise ConfigError(
                f"HF architecture {architecture!r}{nearest(architecture, self.architectures)} is not supported "
                f"for model_type {self.model_types[0]!r}; valid choices: {choices_text(self.architectures)}"
            )


def register_family(family: HFFamily) -> HFFamily:
    for model_type in family.model_types:
        if model_type in _FAMILIES and _FAMILIES[model_type] is not family:
            raise RuntimeError(f"HF model_type {model_type!r} registered twice")
        _FAMILIES[model_type] = family
    return family


def _load_builtin_families() -> None:
    import modaloom.interop.hf as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _FRAMEWORK_MODULES or info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package.__name__}.{info.name}")
        except Exception as exc:  # one broken family must not take the others down
            _BROKEN[info.name] = f"{type(exc).__name__}: {exc}"


def families() -> dict[str, HFFamily]:
    """model_type -> family, for every registered family."""
    _load_builtin_families()
    return dict(_FAMILIES)


def supported_model_types() -> list[str]:
    return sorted(families())


def get_family(model_type: str) -> HFFamily:
    table = families()
    if model_type not in table:
        broken = "".join(f"; family module {m!r} failed to import ({why})" for m, why in _BROKEN.items())
        raise ConfigError(
            f"unsupported HF architecture: model_type {model_type!r}{nearest(model_type, table)}; "
            f"supported model_types: {choices_text(table)}{broken}"
        )
    return table[model_type]
