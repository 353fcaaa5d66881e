"""LoRA (Hu et al. 2021): a trainable low-rank update ``scaling * B @ A`` beside frozen linear weights.

``apply_lora(model, settings)`` replaces every ``nn.Linear`` that ``settings.target_modules`` names by a
``LoraLinear`` (the same ``weight``/``bias`` keys, plus ``lora_A.weight``, ``lora_B.weight`` and the scaling
as a buffer), and leaves trainable only the adapters, ``modules_to_save``, the biases ``bias`` names and
(``train_targets``) the targets. Options follow the peft library's ``LoraConfig`` names. A state dict with
adapters is merged into plain weights by ``merge_lora_state`` (W + scaling * B @ A), which is what a saved
or exported model holds: it loads with ``modaloom.load`` like any other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from modaloom.errors import ConfigError

LORA_A, LORA_B, SCALING = "lora_A.weight", "lora_B.weight", "lora_scaling"
ALL_LINEAR = "all-linear"


class LoraLinear(nn.Linear):
    """An ``nn.Linear`` whose frozen weight is updated by ``scaling * B(A(dropout(x)))``; B starts at zero,
    so the layer first computes exactly what the base layer did."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's own default, as in the paper's code
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer(SCALING, torch.tensor(float(alpha) / r, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B(self.lora_A(self.lora_dropout(x)))
        return F.linear(x, self.weight, self.bias) + update * self.lora_scaling.to(update.dtype)

    def merged_weight(self) -> torch.Tensor:
        """The plain weight this layer computes with (dropout aside): W + scaling * B @ A."""
        return merge_weight(self.weight, self.lora_A.weight, self.lora_B.weight, self.lora_scaling)


def merge_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: torch.Tensor) -> torch.Tensor:
    """W + scaling * B @ A, computed in float32 and returned in W's dtype."""
    delta = (b.float() @ a.float()) * scaling.float()
    return (weight.float() + delta).to(weight.dtype)


def is_lora_key(name: str) -> bool:
    """Whether a state-dict key belongs to an adapter (not to the plain model)."""
    return name.endswith((f".{LORA_A}", f".{LORA_B}", f".{SCALING}"))


def merge_lora_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every adapter folded into its base weight and the adapter keys dropped; a state
    without adapters comes back unchanged (as a new dict)."""
    merged = {k: v for k, v in state.items() if not is_lora_key(k)}
    for key in state:
        if not key.endswith(f".{LORA_A}"):
            continue
        layer = key[: -len(LORA_A) - 1]
        needed = [f"{layer}.weight", f"{layer}.{LORA_B}", f"{layer}.{SCALING}"]
        absent = [k for k in needed if k not in state]
        if absent:
            raise ConfigError(f"LoRA adapter {layer!r} is incomplete: no {', '.join(absent)}")
        merged[f"{layer}.weight"] = merge_weight(state[f"{layer}.weight"], state[key],
                                                 state[f"{layer}.{LORA_B}"], state[f"{layer}.{SCALING}"])
    return merged


def has_lora(state: Mapping[str, Any]) -> bool:
    return any(is_lora_key(k) for k in state)


# ---------------------------------------------------------------- choosing and wrapping


def matches_target(name: str, targets: list[str] | str) -> bool:
    """peft's rule: a string is a regular expression matching the whole module name; a list entry matches
    the name itself or its last dotted parts."""
    if isinstance(targets, str):
        return targets == ALL_LINEAR or re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def module_matches(name: str, entries: list[str]) -> bool:
    """``modules_to_save``: a module named by an entry or whose name ends with ``.entry``, or one inside such
    a module."""
    return any(name == e or name.startswith(f"{e}.") or f".{e}." in f".{name}." for e in entries)


def tied_ids(model: nn.Module) -> set[int]:
    """Parameters reachable under more than one name (an output layer tied to the word table): not adapted,
    since merging would untie them."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {k for k, count in seen.items() if count > 1}


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoraLinear)
            and n.rsplit(".", 1)[-1] not in ("lora_A", "lora_B")]


def apply_lora(model: nn.Module, settings: Any) -> list[str]:
    """Wrap the chosen linear layers (not those inside ``modules_to_save`` or, with ``train_targets``, the
    targets: they train in full) and set ``requires_grad`` as the settings say; returns the adapted module names."""
    targets = settings.target_modules
    if isinstance(targets, str) and targets != ALL_LINEAR:
        try:
            re.compile(targets)
        except re.error as exc:
            raise ConfigError(f"train.lora.target_modules {targets!r} is not a regular expression: {exc}") from None
    modules = [n for n, _ in model.named_modules() if n]
    for entry in settings.modules_to_save:
        if not any(module_matches(n, [entry]) for n in modules):
            tops = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"train.lora.modules_to_save: {entry!r} names no module of the model (a module name "
                              f"or its last dotted parts); top-level modules: {tops}")
    full = list(settings.modules_to_save) + (["targets"] if settings.train_targets else [])
    tied = tied_ids(model)
    chosen = [n for n in linear_names(model) if matches_target(n, targets) and not module_matches(n, full)
              and id(model.get_submodule(n).weight) not in tied]
    if not chosen:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear_names(model)})
        raise ConfigError(f"train.lora.target_modules {targets!r} names no linear layer of the model; its linear "
                          f"layers are called: {', '.join(names)}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(getattr(parent, child), settings.r, settings.lora_alpha,
                                          settings.lora_dropout))
    _set_trainable(model, settings, chosen, full)
    return chosen


def _set_trainable(model: nn.Module, settings: Any, chosen: list[str], full: list[str]) -> None:
    """Adapters train; so do the modules trained in full and the biases ``bias`` names; nothing else. A
    parameter tied to a frozen one (an LM head tied to the word table) stays frozen."""
    trainable: set[int] = set()
    frozen: set[int] = set()
    adapted = set(chosen)
    saved = [e for e in full if e != "targets"]
    for module_name, module in model.named_modules():
        is_adapter = module_name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
        in_full = module_matches(module_name, saved) or ("targets" in full and (
            module_name == "targets" or module_name.startswith("targets.")))
        for pname, param in module.named_parameters(recurse=False):
            bias = pname == "bias" and (settings.bias == "all"
                                        or (settings.bias == "lora_only" and module_name in adapted))
            (trainable if (is_adapter or in_full or bias) else frozen).add(id(param))
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable and id(param) not in frozen)


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each tensor once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
