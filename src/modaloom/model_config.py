"""The model section of a config: embedding, encoder, target embedding, decoder and targets.

Each section holds the fields every part of its kind shares (``EmbeddingConfig``: parts, emb_size, norm ...;
``EncoderConfig``: type, hidden_size, layers_num, dropout; ``TargetConfig``: type, weight, name, source)
plus the options of the parts it selects. A part declares its options as a dataclass named ``Options``
beside its class (``TransformerEncoder.Options``, ``PatchEmbedding.Options``, ``Contrastive.Options``,
``InfoNCE.Options``); a section's class is composed from its base and the selected parts' options, so
``EncoderConfig(type="transformer", heads_num=12)`` is an ``EncoderConfig[TransformerOptions]`` and an
unknown key is checked against that part's own keys. Files keep the flat layout they always had.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from modaloom import registry
from modaloom.config_schema import choice
from modaloom.errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_fast", "gelu_new", "quick_gelu", "relu", "silu", "swish", "tanh")
NORMS = ("layernorm", "rms", "t5", "none")
POOLINGS = ("first", "last", "mean", "max", "eos", "none")
# Written into saved configs; a model folder without it was written before options moved beside the parts.
CONFIG_FORMAT = 2

_COMPOSED: dict[tuple[type, tuple[type, ...]], type] = {}


def _rebuild(base: type, values: dict[str, Any]) -> Any:
    return base(**values)


class Section:
    """Mixin of section bases whose class is chosen by the parts they select (see the module docstring).

    Subclasses set ``kind`` (the registry kind of their parts) and implement ``selected_options``.
    """

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[type, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if "kind" in cls.__dict__:  # a base: pick the composed class for the selected parts
            cls = cls.compose(cls.selected_options(kwargs, cls.__name__))
        return object.__new__(cls)

    def __reduce__(self) -> Any:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return _rebuild, (self.section_base(), values)

    @classmethod
    def section_base(cls) -> type:
        return next(c for c in cls.__mro__ if "kind" in c.__dict__)

    @classmethod
    def selected_options(cls, data: dict[str, Any], where: str) -> tuple[type, ...]:
        raise NotImplementedError

    @classmethod
    def compose(cls, options: tuple[type, ...]) -> type:
        """The dataclass with this base's fields plus every class in ``options`` (cached)."""
        key = (cls, options)
        if key not in _COMPOSED:
            name = f"{cls.__name__}[{', '.join(o.__name__ for o in options)}]" if options else cls.__name__
            composed = dataclasses.make_dataclass(name, [], bases=(*options, cls))
            composed.__module__ = cls.__module__
            composed.options = options
            _COMPOSED[key] = composed
        return _COMPOSED[key]

    @classmethod
    def select_class(cls, data: dict[str, Any], where: str) -> type:
        """Used by ``config_schema.build``: the composed class for a config mapping."""
        if "kind" not in cls.__dict__:
            return cls
        return cls.compose(cls.selected_options(data, where))

    def check_options(self) -> None:
        """Run each selected part's own ``check`` (option-level validation beside the part)."""
        for options in type(self).options:
            check = getattr(options, "check", None)
            if check is not None:
                check(self)

    @classmethod
    def describe(cls, data: dict[str, Any]) -> str:
        """The selection in words, for errors: ``encoder type 'lstm'``, ``embedding parts [word, pos]``."""
        base = cls.section_base()
        if "parts" in {f.name for f in dataclasses.fields(base)}:
            return f"{base.kind} parts [{', '.join(map(str, data.get('parts', ['word', 'pos'])))}]"
        chosen = f"{base.kind} type {data.get('type', base.type)!r}"
        loss = getattr(cls, "loss", None)
        return f"{chosen} with loss {data.get('loss', loss)!r}" if loss else chosen


def part_options(kind: str, name: Any, where: str) -> type:
    """The ``Options`` dataclass of a registered part (an empty one when the part declares none)."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}: expected a part name (a string), got {name!r}")
    return getattr(registry.get(kind, name, where=where), "Options", NoOptions)


@dataclass
class NoOptions:
    """For parts without options of their own."""


@dataclass
class EmbeddingConfig(Section):
    """A named sum of embedding parts, then an optional norm and dropout (or two streams for ``dual``)."""

    kind: ClassVar[str] = "embedding"

    # embedding parts summed in order, by registered name
    parts: list[str] = field(default_factory=lambda: ["word", "pos"])
    emb_size: int = 768  # width of the embedded vectors
    max_seq_length: int = 512  # the longest sequence the model takes (positions, generation, data checks)
    norm: str = choice("layernorm", *NORMS)  # norm applied to the sum of the parts (none: no norm)
    norm_eps: float = 1e-12  # epsilon of that norm
    dropout: float = 0.1  # dropout after the norm
    # batch keys a stream reads instead of the defaults (e.g. input_ids_b for the second tower of a
    # siamese text model); "" keeps the part's default (input_ids / pixel_values / input_features)
    input_key: str = ""
    mask_key: str = ""  # batch key of the padding mask read instead of the default (attention_mask ...)

    @classmethod
    def selected_options(cls, data: dict[str, Any], where: str) -> tuple[type, ...]:
        parts = data.get("parts", ["word", "pos"])
        if not isinstance(parts, (list, tuple)):
            raise ConfigError(f"{where}.parts: expected a list of part names, got {parts!r}")
        found: list[type] = []
        for i, name in enumerate(parts):
            options = part_options("embedding", name, f"{where}.parts.{i}")
            if options is not NoOptions and options not in found:
                found.append(options)
        return tuple(found)

    def validate(self) -> None:
        if not self.parts:
            raise ConfigError("embedding.parts is empty; name at least one part, e.g. [word, pos]")
        self.check_options()


@dataclass
class StackFields:
    """Fields every encoder and decoder shares."""

    type: str = "transformer"  # registered encoder / decoder name
    hidden_size: int = 768  # width of the hidden states
    layers_num: int = 12  # number of layers
    dropout: float = 0.1  # dropout inside the layers (attention output, feed-forward)

    @classmethod
    def selected_options(cls, data: dict[str, Any], where: str) -> tuple[type, ...]:
        options = part_options(cls.kind, data.get("type", "transformer"), f"{where}.type")
        return () if options is NoOptions else (options,)

    def validate(self) -> None:
        if self.layers_num <= 0:
            raise ConfigError(f"layers_num must be positive, got {self.layers_num}")
        self.check_options()


@dataclass
class EncoderConfig(StackFields, Section):
    """A stack mapping embeddings to hidden states, chosen by ``type`` (transformer, lstm, gatedcnn, dual ...)."""

    kind: ClassVar[str] = "encoder"


@dataclass
class DecoderConfig(StackFields, Section):
    """The decoder of an encoder-decoder model, chosen by ``type`` in the ``decoder`` registry."""

    kind: ClassVar[str] = "decoder"


WEIGHT_SCHEDULES = ("constant", "linear", "cosine", "step")


@dataclass
class WeightSchedule:
    """How a target's loss weight changes over training: ``weight`` times a factor of the optimizer step.

    The factor is ``start_factor`` before ``start_step`` and ``end_factor`` from ``end_step`` on; in between it
    moves linearly (``linear``), along a half cosine (``cosine``), or stays at ``start_factor`` (``step``: one
    jump at ``end_step``). ``constant``: 1 at every step. The names follow torch's ``LinearLR``. The factor is a
    pure function of the step, so a resumed run weighs its losses as the uninterrupted one does.
    """

    type: str = choice("linear", *WEIGHT_SCHEDULES)
    start_step: int = 0
    end_step: int = 0
    start_factor: float = 0.0
    end_factor: float = 1.0

    def validate(self) -> None:
        if self.start_step < 0 or self.end_step < self.start_step:
            raise ConfigError(f"weight_schedule needs 0 <= start_step <= end_step, got start_step {self.start_step}, "
                              f"end_step {self.end_step}")
        if self.start_factor < 0 or self.end_factor < 0:
            raise ConfigError(f"weight_schedule factors must be >= 0, got start_factor {self.start_factor}, "
                              f"end_factor {self.end_factor}")

    def factor(self, step: int | None) -> float:
        """The multiplier of ``weight`` at optimizer step ``step`` (0-based); None (outside training): the end."""
        if self.type == "constant":
            return 1.0
        if step is None or step >= self.end_step:
            return self.end_factor
        if step < self.start_step or self.type == "step":
            return self.start_factor
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        if self.type == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start_factor + (self.end_factor - self.start_factor) * progress


@dataclass
class TargetConfig(Section):
    """One objective with its head, chosen by ``type``; a target with a ``loss`` option adds that loss's options."""

    kind: ClassVar[str] = "target"

    type: str = "mlm"  # registered target name (mlm, lm, cls, clr ...)
    weight: float = 1.0  # this target's loss is multiplied by it in the model's summed loss
    name: str = ""  # metric prefix; default: the type
    source: str = choice("auto", "auto", "encoder", "decoder")  # which states the target reads
    weight_schedule: WeightSchedule | None = None  # None: ``weight`` at every step

    @property
    def label(self) -> str:
        return self.name or self.type

    def weight_at(self, step: int | None) -> float:
        """The loss weight at optimizer step ``step`` (0-based): ``weight`` times the schedule's factor."""
        schedule = self.weight_schedule
        return self.weight if schedule is None else self.weight * schedule.factor(step)

    @classmethod
    def selected_options(cls, data: dict[str, Any], where: str) -> tuple[type, ...]:
        options = part_options("target", data.get("type", "mlm"), f"{where}.type")
        found = [] if options is NoOptions else [options]
        loss_field = next((f for f in dataclasses.fields(options) if f.name == "loss"), None)
        if loss_field is not None:
            loss = part_options("loss", data.get("loss", loss_field.default), f"{where}.loss")
            if loss is not NoOptions:
                found.append(loss)
        return tuple(found)

    def validate(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"target weight must be >= 0, got {self.weight}")
        self.check_options()


@dataclass
class ModelConfig:
    """The five parts. ``tgt_embedding`` and ``decoder`` are present for encoder-decoder models only."""

    # the source embedding (model.embedding.*)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the encoder stack (model.encoder.*)
    # the decoder's input embedding; null for encoder-only models
    tgt_embedding: EmbeddingConfig | None = None
    decoder: DecoderConfig | None = None  # the decoder stack; null for encoder-only models
    # the objectives and their heads (model.targets.N.*); losses add with their weights
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    share_embedding: bool = False  # target embedding shares the source word embedding (T5, BART)
    init_std: float = 0.02  # standard deviation of the normal initialisation of weights
    paper: str = ""  # the publication a zoo config reproduces

    def validate(self) -> None:
        if (self.tgt_embedding is None) != (self.decoder is None):
            raise ConfigError("tgt_embedding and decoder go together: give both or neither")
        if not self.targets:
            raise ConfigError("a model needs at least one target")
        seen = set()
        for t in self.targets:
            if t.label in seen:
                raise ConfigError(f"two targets are named {t.label!r}; give one a distinct 'name'")
            seen.add(t.label)
        if self.share_embedding and self.tgt_embedding is not None:
            sizes = (getattr(self.embedding, "vocab_size", 0), getattr(self.tgt_embedding, "vocab_size", 0))
            if sizes[1] not in (0, sizes[0]):
                raise ConfigError(f"share_embedding needs equal vocabularies, got {sizes[0]} and {sizes[1]}")


def vocab_size_of(section: EmbeddingConfig | None) -> int:
    """The vocabulary of an embedding section (0 when none of its parts has a word table)."""
    return int(getattr(section, "vocab_size", 0) or 0) if section is not None else 0


def model_section_from_saved(data: dict[str, Any]) -> dict[str, Any]:
    """The model section of a saved ``config.json`` (model folder or checkpoint).

    Folders written before ``CONFIG_FORMAT`` 2 listed every key of every part in each section (a ViT's
    embedding carried ``vocab_size``, a BERT target ``feature_size``); keys the selected parts do not have
    had no effect then and are dropped, so those folders load with the same numbers.
    """
    section = data.get("model", data)
    if int(data.get("format", 1)) >= CONFIG_FORMAT:
        return section
    return _prune_legacy_model(section)


def _prune_legacy_model(model: dict[str, Any]) -> dict[str, Any]:
    out = dict(model)
    for key, base in (("embedding", EmbeddingConfig), ("tgt_embedding", EmbeddingConfig),
                      ("encoder", EncoderConfig), ("decoder", DecoderConfig)):
        if isinstance(out.get(key), dict):
            out[key] = _prune_legacy_section(base, out[key], f"model.{key}")
    if isinstance(out.get("targets"), list):
        out["targets"] = [_prune_legacy_section(TargetConfig, t, f"model.targets.{i}") if isinstance(t, dict) else t
                          for i, t in enumerate(out["targets"])]
    return out


def _prune_legacy_section(base: type, section: dict[str, Any], where: str) -> dict[str, Any]:
    cls = base.select_class(section, where)
    keep = {f.name for f in dataclasses.fields(cls) if f.init}
    out = {k: v for k, v in section.items() if k in keep}
    if isinstance(out.get("streams"), list):
        out["streams"] = [_prune_legacy_section(base, s, f"{where}.streams.{i}") if isinstance(s, dict) else s
                          for i, s in enumerate(out["streams"])]
    return out


def streams_of(section: Any) -> list[Any]:
    """The per-stream sections of a dual embedding or encoder section ([] for any other part)."""
    return list(getattr(section, "streams", None) or [])
