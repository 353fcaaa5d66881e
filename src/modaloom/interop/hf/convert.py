"""HuggingFace <-> modaloom: read an HF folder or model, map it with its family's table, write either side.

``hf_to_modaloom`` takes an HF model folder (``config.json`` + safetensors or ``pytorch_model.bin``, read
with ``weights_only=True``) or an in-memory ``transformers`` model. ``modaloom_to_hf`` writes a folder that
``transformers``' ``from_pretrained`` loads: ``config.json`` from the HF config class and
``model.safetensors`` (tied keys left out, as ``transformers`` itself does), atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modaloom.atomic import replace_directory
from modaloom.config_schema import to_dict
from modaloom.errors import CheckpointError, ConfigError, ModaloomError
from modaloom.interop.hf.family import HFFamily, families, get_family
from modaloom.interop.hf.mapping import hf_state_to_ours, ours_state_to_hf
from modaloom.model import Model, build_model
from modaloom.model_config import ModelConfig
from modaloom.weights import load_weights_checked, read_weights, tied_aliases


@dataclass
class HFConversion:
    """What a conversion did: the model, the HF side it maps to, and the keys that did not carry over."""

    model: Model
    model_type: str
    architecture: str
    random_init: list[str] = field(default_factory=list)  # our keys the checkpoint had no weights for
    dropped: list[str] = field(default_factory=list)  # our keys the HF architecture has no place for
    path: Path | None = None

    def origin(self) -> dict[str, Any]:
        """The ``interop`` section saved beside a converted model, so that a later export round-trips."""
        return {"from": "hf", "model_type": self.model_type, "architecture": self.architecture,
                "random_init": self.random_init}


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dev dependency
        raise ConfigError("HF conversion needs transformers: pip install 'modaloom[hf]'") from None
    return transformers


def _hf_class(architecture: str):
    cls = getattr(_transformers(), architecture, None)
    if cls is None:
        raise ConfigError(f"transformers has no model class {architecture!r}")
    return cls


def _meta_model(cls, hf_config):
    """The HF model on the meta device: its key names and shapes, with no memory and no initialisation."""
    with torch.device("meta"):
        return cls(hf_config)


def _prefix_info(meta) -> tuple[str, bool]:
    prefix = meta.base_model_prefix
    return prefix, not hasattr(meta, prefix)


def _with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k if k.startswith(head) else head + k: v for k, v in state.items()}


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    if single.is_file():
        return read_weights(single)
    for index_name, reader in (("model.safetensors.index.json", read_weights),
                               ("pytorch_model.bin.index.json", _read_torch_bin)):
        index = directory / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(reader(directory / name))
            return state
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        return _read_torch_bin(binary)
    raise CheckpointError(
        f"{directory}: no HF weights (model.safetensors, its sharded index, or pytorch_model.bin)"
    )


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def _read_hf_source(source: Any) -> tuple[Any, dict[str, torch.Tensor], str, str]:
    """(HF config, state dict, architecture, description) from a folder or an in-memory HF model."""
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{directory} is not an HF model folder: no config.json")
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        model_type = raw.get("model_type")
        if not model_type:
            raise ConfigError(f"{config_path} has no model_type")
        family = get_family(model_type)
        hf_config = _transformers().AutoConfig.from_pretrained(str(directory))
        architecture = (raw.get("architectures") or [family.base_architecture])[0]
        return hf_config, _read_hf_weights(directory), architecture, str(directory)
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return source.config, source.state_dict(), type(source).__name__, type(source).__name__
    raise ConfigError(f"expected an HF model folder or a transformers model, got {type(source).__name__}")


def convert_from_hf(source: Any, architecture: str | None = None) -> HFConversion:
    """An HF folder or model -> HFConversion (model plus what did not carry over). Loads nothing partially."""
    hf_config, hf_state, found_architecture, origin = _read_hf_source(source)
    family = get_family(hf_config.model_type)
    architecture = architecture or found_architecture
    family.check_architecture(architecture)
    cfg = family.to_modaloom_config(hf_config, architecture)
    model = build_model(to_dict(cfg))  # through the schema, so that the config is validated
    meta = _meta_model(_hf_class(architecture), hf_config)
    prefix, is_base = _prefix_info(meta)
    hf_shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    if is_base:
        hf_state = _with_prefix(hf_state, prefix)
        hf_shapes = {f"{prefix}.{k}": v for k, v in hf_shapes.items()}
    mapping = family.mapping(model.config, architecture)
    own = model.state_dict()
    aliases = tied_aliases(model)
    state, random_init = hf_state_to_ours(
        mapping, hf_state, {k: tuple(v.shape) for k, v in own.items()}, aliases, hf_shapes, origin=origin,
    )
    for key in random_init:
        state[key] = own[key]
    load_weights_checked(model, state, origin)
    model.eval()
    return HFConversion(model, hf_config.model_type, architecture, random_init=random_init)


def hf_to_modaloom(source: Any, architecture: str | None = None) -> Model:
    """An HF model folder or ``transformers`` model -> a modaloom Model (eval mode)."""
    return convert_from_hf(source, architecture).model


def _choose_family(cfg: ModelConfig, model_type: str | None, architecture: str | None) -> HFFamily:
    if model_type is not None:
        return get_family(model_type)
    if architecture is not None:
        for family in families().values():
            if architecture in family.architectures:
                return family
    reasons = []
    seen: set[int] = set()
    for name, family in families().items():
        if id(family) in seen:
            continue
        seen.add(id(family))
        try:
            family.to_hf_config(cfg, family.architecture_for(cfg))
            return family
        except ModaloomError as exc:
            reasons.append(f"{name}: {exc}")
    raise ConfigError("no HF family can express this model; " + " | ".join(reasons))


def _write_atomically(directory: Path, hf_config: Any, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with replace_directory(directory) as tmp:
        hf_config.save_pretrained(str(tmp))
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})


def modaloom_to_hf(model: Model, out_dir: str | Path, model_type: str | None = None,
                   architecture: str | None = None) -> HFConversion:
    """Write ``model`` as an HF folder that ``from_pretrained`` loads; returns what was written and dropped.

    ``model_type`` defaults to the first family that can express the config; ``architecture`` (the HF
    class) defaults to the one matching the model's targets (e.g. BertForPreTraining for mlm + sp).
    """
    cfg = model.config
    family = _choose_family(cfg, model_type, architecture)
    architecture = architecture or family.architecture_for(cfg)
    family.check_architecture(architecture)
    hf_config = family.to_hf_config(cfg, architecture)
    hf_config.architectures = [architecture]
    meta = _meta_model(_hf_class(architecture), hf_config)
    prefix, is_base = _prefix_info(meta)
    hf_shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    if is_base:
        hf_shapes = {f"{prefix}.{k}": v for k, v in hf_shapes.items()}
    mapping = family.mapping(cfg, architecture)
    state, dropped = ours_state_to_hf(mapping, model.state_dict(), tied_aliases(model), hf_shapes,
                                      origin=f"export to {architecture}")
    aliases = mapping.aliases()
    state = {k: v for k, v in state.items() if k not in aliases}
    if is_base:
        head = prefix + "."
        state = {k[len(head):] if k.startswith(head) else k: v for k, v in state.items()}
    out_dir = Path(out_dir)
    _write_atomically(out_dir, hf_config, state)
    return HFConversion(model, hf_config.model_type, architecture, dropped=dropped, path=out_dir)
