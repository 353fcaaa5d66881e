"""Locked parts and partial initialisation (LiT): ``train.freeze`` and ``train.init_from``.

``freeze(model, entries)``: each entry is a parameter-name prefix on dotted boundaries (``encoder.streams.1``
covers ``encoder.streams.1.layers.0.ffn.linear_in.weight``, not ``encoder.streams.10...``) or, when it holds
``*``, ``?`` or ``[``, a glob over whole names (``*.norm.*``). Matching parameters get
``requires_grad=False`` (so the optimizer never sees them) and the modules an entry names stay in eval mode
for the whole run, as LiT's locked tower: no dropout, no batch-norm statistics updated, so the part computes
the same function at every step. An entry that matches nothing is refused with the valid names near it.

``init_from(model, entries)``: each entry copies a model folder's weights under ``source_prefix`` into the
model's parameters under ``prefix``; shapes must agree, and the keys each side lacks are reported.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modaloom.errors import CheckpointError, ConfigError

GLOB_CHARS = "*?["
SHOWN = 12


def _is_glob(entry: str) -> bool:
    return any(c in entry for c in GLOB_CHARS)


def name_matches(name: str, entry: str) -> bool:
    """Whether ``name`` is ``entry``, lies under it (dotted prefix), or matches it as a glob."""
    if _is_glob(entry):
        return fnmatch.fnmatchcase(name, entry) or fnmatch.fnmatchcase(name, f"{entry}.*")
    return not entry or name == entry or name.startswith(f"{entry}.")


def nearby_names(model: nn.Module, entry: str) -> list[str]:
    """The module names one level below the longest module prefix of ``entry`` (the top level when none)."""
    modules = dict(model.named_modules())
    parts = entry.split(".")
    parent = ""
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules and not _is_glob(candidate):
            parent = candidate
            break
    base = modules[parent] if parent else model
    return [f"{parent}.{n}" if parent else n for n, _ in base.named_children()]


def _unknown(model: nn.Module, option: str, entry: str) -> ConfigError:
    valid = nearby_names(model, entry)
    shown = ", ".join(valid[:SHOWN]) + (" ..." if len(valid) > SHOWN else "")
    return ConfigError(f"{option}: {entry!r} names no parameter of the model; valid names there: {shown}")


def _lock_eval(module: nn.Module) -> None:
    """Keep ``module`` (and everything in it) in eval mode whatever ``train()`` its parents call."""
    def train(mode: bool = True) -> nn.Module:
        return nn.Module.train(module, False)

    module.train = train  # type: ignore[method-assign]
    nn.Module.train(module, False)


def freeze(model: nn.Module, entries: Iterable[str]) -> list[str]:
    """Freeze the parameters the entries name and lock the named modules in eval mode; returns the frozen
    parameter names. Every entry must match at least one parameter."""
    frozen: list[str] = []
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    for entry in entries:
        hit = [n for n in names if name_matches(n, entry)]
        if not hit:
            raise _unknown(model, "train.freeze", entry)
        for name in hit:
            params[name].requires_grad_(False)
        frozen.extend(n for n in hit if n not in frozen)
        for module_name, module in model.named_modules():
            if module_name and name_matches(module_name, entry):
                _lock_eval(module)
    return frozen


def frozen_in_eval(model: nn.Module) -> list[str]:
    """The modules locked in eval mode by ``freeze`` (for reports and tests)."""
    return [n for n, m in model.named_modules() if "train" in vars(m)]


# ---------------------------------------------------------------- init_from


@dataclass
class PartReport:
    """What one ``init_from`` entry loaded, and what either side lacked."""

    prefix: str
    folder: Path
    source_prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the model's keys under prefix the folder lacks
    unused: list[str] = field(default_factory=list)  # the folder's keys under source_prefix not used

    def describe(self) -> str:
        where = f"{self.folder}" + (f" ({self.source_prefix}.*)" if self.source_prefix else "")
        text = f"{self.prefix or '(whole model)'} <- {where}: {len(self.loaded)} tensors loaded"
        if self.missing:
            text += f"; {len(self.missing)} not in the folder, left as they were: {', '.join(self.missing)}"
        if self.unused:
            text += f"; {len(self.unused)} of the folder unused: {', '.join(self.unused)}"
        return text


def _strip(name: str, prefix: str) -> str | None:
    """``name`` relative to ``prefix`` (None when outside it)."""
    if not prefix:
        return name
    if name.startswith(f"{prefix}."):
        return name[len(prefix) + 1:]
    return None


def load_part(model: nn.Module, prefix: str, folder: Path, source_prefix: str = "") -> PartReport:
    """Copy ``folder``'s weights under ``source_prefix`` into ``model``'s under ``prefix``; any shape
    mismatch raises before a copy, naming the keys."""
    from modaloom.model import WEIGHTS_NAME
    from modaloom.weights import read_weights

    own = model.state_dict()
    ours = {rel: k for k in own if (rel := _strip(k, prefix)) is not None}
    if not ours:
        raise _unknown(model, "train.init_from prefix", prefix)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"train.init_from folder {folder} is not a modaloom model folder (no {WEIGHTS_NAME})")
    state = read_weights(folder / WEIGHTS_NAME)
    theirs = {rel: k for k in state if (rel := _strip(k, source_prefix)) is not None}
    if not theirs:
        tops = sorted({k.split(".")[0] for k in state})
        raise ConfigError(f"train.init_from source_prefix {source_prefix!r}: no weights of {folder} lie under it; "
                          f"its top-level names: {', '.join(tops)}")
    mismatched = [f"{ours[r]} {tuple(own[ours[r]].shape)} vs {theirs[r]} {tuple(state[theirs[r]].shape)}"
                  for r in ours if r in theirs and own[ours[r]].shape != state[theirs[r]].shape]
    if mismatched:
        raise CheckpointError(f"train.init_from {prefix!r} <- {folder}: shape mismatch, nothing loaded: "
                              + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else ""))
    report = PartReport(prefix, folder, source_prefix)
    with torch.no_grad():
        for rel, key in ours.items():
            if rel in theirs:
                own[key].copy_(state[theirs[rel]].to(own[key].dtype))
                report.loaded.append(key)
            else:
                report.missing.append(key)
    report.unused = sorted(theirs[r] for r in theirs if r not in ours)
    return report


def init_from(model: nn.Module, entries: Iterable[Any]) -> list[PartReport]:
    """Apply every ``train.init_from`` entry in order (a later one overwrites an earlier one's keys)."""
    return [load_part(model, e.prefix, Path(e.folder), e.source_prefix) for e in entries]


def set_trainable_parts(model: nn.Module, train: Any) -> list[str]:
    """``train.lora``, then ``train.freeze`` (which also locks adapters under a frozen prefix); returns report
    lines. Works on a meta-device model too (the dry-run plan counts what trains)."""
    from modaloom.lora import apply_lora

    lines = []
    if train.lora is not None:
        adapted = apply_lora(model, train.lora)
        lines.append(f"LoRA r={train.lora.r} alpha={train.lora.lora_alpha:g} on {len(adapted)} linear layers "
                     f"({', '.join(adapted[:4])}{' ...' if len(adapted) > 4 else ''})")
    if train.freeze:
        frozen = freeze(model, train.freeze)
        lines.append(f"frozen: {len(frozen)} parameter tensors under {', '.join(train.freeze)} (kept in eval mode)")
    return lines


def apply_strategies(model: nn.Module, train: Any) -> list[str]:
    """``train.init_from``, then ``set_trainable_parts``; returns report lines for the job's start message,
    ending with the trainable parameter count when anything is frozen."""
    from modaloom.lora import trainable_count

    lines = [f"init_from {r.describe()}" for r in init_from(model, train.init_from)]
    lines += set_trainable_parts(model, train)
    if train.lora is not None or train.freeze:
        trainable, total = trainable_count(model)
        lines.append(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    return lines
