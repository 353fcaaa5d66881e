"""Activation functions by config name."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from modaloom.errors import ConfigError, choices_text


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # CLIP's sigmoid approximation of GELU.
    return x * torch.sigmoid(1.702 * x)


ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_fast": _gelu_fast,
    "gelu_new": _gelu_fast,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATION_FUNCTIONS:
        raise ConfigError(f"unknown activation {name!r}; valid choices: {choices_text(ACTIVATION_FUNCTIONS)}")
    return ACTIVATION_FUNCTIONS[name]


__all__ = ["activation", "ACTIVATION_FUNCTIONS", "math"]
