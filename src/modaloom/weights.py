"""Safetensors weights for models and checkpoints: tied tensors stored once, every key and shape checked.

A weights file stores each tensor once; names that are the same tensor as an earlier name (a tied LM head,
shared encoder/decoder embeddings) are left out and listed in the file's metadata as
``aliases = {"alias": "stored name"}``. ``read_weights`` restores them, and ``load_weights_checked`` also
accepts files without that list (older saves, ``transformers`` files) by filling tied names from the model.
Files are written atomically; a missing or corrupt file is a ``CheckpointError`` naming the path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from modaloom.atomic import atomic_file
from modaloom.errors import CheckpointError

ALIASES_KEY = "aliases"
SHOWN = 5  # how many offending names an error lists


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    """What makes two entries the same tensor: the same memory seen the same way."""
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return ("object", id(tensor))
    return (str(tensor.device), tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tensor.stride(), tensor.dtype)


def tied_aliases(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Names that are the same tensor as an earlier name, as alias -> canonical (the first name)."""
    if isinstance(model_or_state, nn.Module):
        state: Mapping[str, torch.Tensor] = model_or_state.state_dict(keep_vars=True)
    else:
        state = model_or_state
    seen: dict[tuple[Any, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        key = _identity(tensor)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Write plain tensors (no two may share memory) to a safetensors file atomically."""
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(plain, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return Path(path)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing or corrupt file raises CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not a dict)
            return tensors, dict(handle.metadata() or {})
    except FileNotFoundError:
        raise CheckpointError(f"no weights file at {path}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a model's (or a state dict's) tensors atomically, each tied tensor once, aliases in metadata."""
    if isinstance(model_or_state, nn.Module):
        state: Mapping[str, torch.Tensor] = model_or_state.state_dict()
    else:
        state = model_or_state
    aliases = tied_aliases(state)
    unique = {k: v for k, v in state.items() if k not in aliases}
    meta = {**(metadata or {}), ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    return write_tensors(path, unique, meta)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file, tied names restored from its alias list (absent in plain files)."""
    tensors, metadata = read_tensors(path)
    try:
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
        valid = isinstance(aliases, dict) and all(
            isinstance(a, str) and isinstance(s, str) and s in tensors for a, s in aliases.items())
    except ValueError:
        valid = False
    if not valid:
        raise CheckpointError(f"cannot read {path}: its {ALIASES_KEY!r} metadata is not a map of stored names")
    for alias, stored in aliases.items():
        tensors.setdefault(alias, tensors[stored])
    return tensors


def _groups(aliases: Mapping[str, str]) -> dict[str, set[str]]:
    """canonical -> every name of that tensor (itself included)."""
    groups: dict[str, set[str]] = {}
    for alias, canonical in aliases.items():
        groups.setdefault(canonical, {canonical}).add(alias)
    return groups


def key_differences(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                    aliases: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(missing, unexpected) names of ``state`` against ``expected``; a tied tensor is present when any
    of its names is."""
    aliases = dict(aliases or {})
    groups = _groups(aliases)
    provided = set(state)
    missing = [name for name in expected
               if name not in aliases and not (groups.get(name, {name}) & provided)]
    return missing, sorted(provided - set(expected))


def check_state(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], origin: str,
                aliases: Mapping[str, str] | None = None, strict: bool = True) -> tuple[list[str], list[str]]:
    """Raise CheckpointError listing shape mismatches (and, when strict, missing and unexpected keys);
    returns (missing, unexpected).

    ``expected`` is the model's state dict; a tied tensor counts as present when any of its names is.
    """
    missing, unexpected = key_differences(expected, state, aliases)
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if mismatched:
        more = " ..." if len(mismatched) > SHOWN else ""
        problems.append("shape mismatch: " + "; ".join(mismatched[:SHOWN]) + more)
    if strict and missing:
        problems.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:SHOWN])}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:SHOWN])}")
    if problems:
        raise CheckpointError(f"{origin} does not match the model: " + "; ".join(problems) + "; nothing was loaded")
    return missing, unexpected


def load_weights_checked(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str,
                         strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``model`` after checking every key and shape; any problem raises before a copy.

    Tied names missing from ``state`` are filled from whichever name of the same tensor is present. Returns
    the (missing, unexpected) names, which only a non-strict load lets through.
    """
    own = model.state_dict()
    aliases = tied_aliases(model)
    missing, unexpected = check_state(own, state, origin, aliases, strict)
    groups = _groups(aliases)
    with torch.no_grad():
        for name, value in state.items():
            if name not in own:
                continue
            own[name].copy_(value.to(own[name].dtype))
            for alias in groups.get(aliases.get(name, name), ()):
                if alias != name and alias not in state:
                    own[alias].copy_(value.to(own[alias].dtype))
    return missing, unexpected
