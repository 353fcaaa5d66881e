"""HF families: one object per architecture family, registered under the HF ``model_type``s it handles.

How to add a family (a new file in this package is picked up automatically):

1. Subclass ``HFFamily``; set ``model_types`` (e.g. ``("bert",)``), ``architectures`` (HF class name ->
   a short description of the heads it carries) and ``base_architecture`` (the headless class).
2. ``to_modaloom_config(hf_config, architecture)``: an HF config -> ``ModelConfig`` (raise ConfigError for
   options modaloom cannot reproduce, naming the option); build it from the dict layout (``build_config``).
3. ``hf_config(cfg, architecture)``: the reverse translation, with no checks of its own: ``to_hf_config``
   translates there and back and refuses every field that does not survive (``roundtrip``). List the
   fields the family legitimately does not hold (dropouts it has no option for, ...) in ``export_ignore``,
   each with a comment.
4. ``architecture_for(cfg)``: the HF class to export a model to, from its targets.
5. ``mapping(cfg, architecture)``: a ``Mapping`` assembled from module-level tables of ``Rule``s (keys
   written with the base-model prefix, e.g. ``bert.embeddings...``, even for headless checkpoints;
   the converter adds or strips the prefix).
6. Call ``register_family(MyFamily())`` at module level, and add a parity test under tests/interop.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

from modaloom.config_schema import Source, build
from modaloom.errors import ConfigError, choices_text, nearest
from modaloom.interop.hf.mapping import Mapping
from modaloom.interop.hf.roundtrip import check_round_trip
from modaloom.model_config import ModelConfig

_FAMILIES: dict[str, HFFamily] = {}
_FRAMEWORK_MODULES = {"mapping", "family", "convert", "roundtrip"}
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


def hf_activation(act: str) -> str:
    """Our activation's HF name (an unknown one passes through, to be refused on the way back)."""
    return OUR_ACTIVATIONS.get(act, act)


def activation_from_hf(name: Any, option: str) -> str:
    if not isinstance(name, str) or name not in HF_ACTIVATIONS:
        raise ConfigError(
            f"HF option {option}={name!r} is not supported; valid choices: {choices_text(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


def hf_option(hf_config: Any, name: str, default: Any) -> Any:
    return getattr(hf_config, name, default)


def refuse(hf_config: Any, option: str, supported: Any, default: Any) -> None:
    """Refuse an HF config whose ``option`` (``default`` when absent) is not the one value we reproduce."""
    value = hf_option(hf_config, option, default)
    if value != supported:
        raise ConfigError(
            f"HF option {option}={value!r} of model_type {hf_config.model_type!r} is not supported "
            f"(modaloom reproduces {option}={supported!r})"
        )


def build_config(data: dict[str, Any], architecture: str) -> ModelConfig:
    """The model section in the dict layout -> ModelConfig, validated through the schema."""
    return build(ModelConfig, data, Source(f"HF {architecture} config"), "model")


def attention_dropout(stack: Any) -> float:
    """A stack's attention dropout (``None`` in our config means: the same as ``dropout``)."""
    return stack.dropout if stack.attention_dropout is None else stack.attention_dropout


def first_target(cfg: ModelConfig, *types: str) -> Any:
    """The first target of one of ``types`` (a TargetConfig), or None."""
    return next((t for t in cfg.targets if t.type in types), None)


def _hf_validation_errors() -> tuple[type[BaseException], ...]:
    """What HF config classes raise for values they cannot hold (strict dataclasses since transformers 5)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover - older huggingface_hub
        return (ValueError,)
    return (ValueError, StrictDataclassError)


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def missing_option(exc: AttributeError) -> str:
    """Why a family could not read a config: the section and the option its selected part lacks."""
    section = getattr(exc, "obj", None)
    describe = getattr(type(section), "describe", None)
    if describe is None or not getattr(exc, "name", None):
        return f"the model lacks a part this family needs ({exc})"
    chosen = describe({f: getattr(section, f) for f in ("parts", "type", "loss") if hasattr(section, f)})
    return f"it needs option {exc.name!r}, which the model's {chosen} does not have"


class HFFamily:
    """Config translation and key tables for one HF architecture family."""

    model_types: tuple[str, ...] = ()
    architectures: dict[str, str] = {}
    base_architecture: str = ""
    export_ignore: tuple[str, ...] = ()  # dotted-key patterns this family does not hold (see roundtrip)

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        raise NotImplementedError

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        """The HF config ``cfg`` translates to, unchecked (``to_hf_config`` checks it by a round trip)."""
        raise NotImplementedError

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        """``cfg`` as an HF config; refused, naming every field, unless it converts back to the same model."""
        name = self.model_types[0]
        try:
            with _transformers_quiet():  # its warnings about a translated config are judged below instead
                hf = self.hf_config(cfg, architecture)
            back = self.to_modaloom_config(hf, architecture)
        except ConfigError as exc:
            raise ConfigError(f"cannot export to HF {name}: {exc}") from None
        except AttributeError as exc:  # the family reads an option the model's selected part does not have
            raise ConfigError(f"cannot export to HF {name}: {missing_option(exc)}") from None
        except _hf_validation_errors() as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise ConfigError(f"cannot export to HF {name}: transformers refuses the config ({reason})") from None
        check_round_trip(name, cfg, back, self.export_ignore)
        return hf

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
