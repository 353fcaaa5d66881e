"""Encoder interface: (embedded sequence, real-token mask) -> hidden states."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modaloom import registry
from modaloom.context import ForwardContext
from modaloom.model_config import EncoderConfig


class Encoder(nn.Module):
    """Base class of registered encoders. ``input_size`` is the embedding width feeding the encoder."""

    def __init__(self, cfg: EncoderConfig, input_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_size = input_size

    @property
    def output_size(self) -> int:
        return self.cfg.hidden_size

    def forward(self, x: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: ForwardContext) -> Any:
        raise NotImplementedError


def build_encoder(cfg: EncoderConfig, input_size: int, where: str = "encoder") -> Encoder:
    return registry.get("encoder", cfg.type, where=f"{where}.type")(cfg, input_size)
