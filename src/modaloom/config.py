"""Load a whole config (model / data / train) from YAML or JSON, with command-line overrides.

Nested modaloom configs and TencentPretrain's flat JSON configs are both accepted; the latter are
recognised by their top-level keys (``embedding``, ``encoder``, ``target`` ...) and translated by
``modaloom.interop.tencentpretrain_config``. A value that is not an existing file may name a zoo config
(``bert/base``); see ``modaloom.zoo.resolve_config``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modaloom.config_schema import Source, build, load_document, parse_overrides, set_dotted, to_dict
from modaloom.data.config import DataConfig
from modaloom.errors import ConfigError
from modaloom.model_config import ModelConfig
from modaloom.train.config import TrainConfig
from modaloom.zoo import resolve_config


@dataclass
class Config:
    """A full job description."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the five parts and their sizes (model.*)
    data: DataConfig = field(default_factory=DataConfig)  # how batches are drawn from the dataset (data.*)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation, checkpoints and logging (train.*)


def is_tencentpretrain(data: dict[str, Any]) -> bool:
    """TencentPretrain configs are flat: ``encoder`` is a string, ``target`` a list of names."""
    return isinstance(data.get("encoder"), str) or "target" in data or "stream_0" in data


DEEPSPEED_KEYS = ("zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size")


def config_dict(path: str | Path) -> tuple[dict[str, Any], Source]:
    """The nested dict of a config file or zoo name (TencentPretrain configs translated), with line info."""
    path = resolve_config(path)
    data, source = load_document(path)
    if any(key in data for key in DEEPSPEED_KEYS):
        raise ConfigError(
            f"{path}: this is a DeepSpeed engine config, not a model config; modaloom trains with torchrun "
            f"DDP/FSDP2 (see docs/training.md) and needs a model config such as the zoo's bert/base "
            f"(`modaloom zoo` lists them)"
        )
    if is_tencentpretrain(data):
        from modaloom.interop.tencentpretrain_config import translate

        return translate(data, source), Source(source.file)
    return data, source


def require_named_parts(model: Any, origin: str) -> None:
    """A config must name its model's parts: defaults alone would build a BERT-base without a word."""
    missing = []
    if not isinstance(model, dict) or not model:
        missing = ["model.embedding.parts", "model.encoder", "model.targets"]
    else:
        embedding = model.get("embedding")
        if not isinstance(embedding, dict) or "parts" not in embedding:
            missing.append("model.embedding.parts")
        if not model.get("encoder"):
            missing.append("model.encoder")
        if not model.get("targets"):
            missing.append("model.targets")
    if missing:
        raise ConfigError(f"{origin}: the config does not name {', '.join(missing)}; a model is chosen, never "
                          f"defaulted: start from a zoo config (--config bert/tiny, `modaloom zoo` lists them) "
                          f"or name the parts and sizes yourself")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, require_parts: bool = False) -> Config:
    """Build a validated Config from a file or zoo name (or ``base`` dict) plus ``key.sub=value`` overrides.

    With ``require_parts`` (every command line job) the model section must name its parts.
    """
    if path is not None:
        data, source = config_dict(path)
    else:
        data, source = copy.deepcopy(base or {}), Source()
    for item, (key, value) in zip(overrides or [], parse_overrides(overrides or []), strict=True):
        if key.split(".")[0] not in ("model", "data", "train"):
            raise ConfigError(f"override {key!r} must start with model., data. or train.")
        set_dotted(data, key, value)
        source.overrides[key] = item.strip()  # errors about this key name the override, not a file line
    if require_parts:
        require_named_parts(data.get("model"), str(path) if path is not None else "config")
    return build(Config, data, source)


def load_model_config(path: str | Path) -> ModelConfig:
    """A ModelConfig from a full config file, a model-only file, a zoo name, or a TencentPretrain config."""
    data, source = config_dict(path)
    if "model" in data:
        return build(ModelConfig, data["model"], source, "model")
    return build(ModelConfig, data, source)


def dump_config(config: Any) -> dict[str, Any]:
    return to_dict(config)
