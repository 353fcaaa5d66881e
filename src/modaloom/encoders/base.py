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

    # the views a multi-mode encoder computes, chosen per call by ``ctx.encoder_mode`` (``modality_experts``:
    # dual, fusion); empty: one view, and targets' ``encoder_mode`` is ignored
    modes: tuple[str, ...] = ()
    default_mode: str | None = None

    @property
    def output_size(self) -> int:
        return self.cfg.hidden_size

    def resolve_mode(self, mode: str | None) -> str | None:
        """The view a call in ``mode`` computes: None for single-view encoders, else ``mode`` or the default."""
        return (mode or self.default_mode) if self.modes else None

    def output_mask(self, mask: Any, hidden: Any, ctx: ForwardContext) -> Any:
        """The real-token mask of ``hidden`` given the embedding's ``mask``: the same, unless the encoder
        reshapes the sequence (``modality_experts`` in fusion mode concatenates its streams)."""
        return mask

    def forward(self, x: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: ForwardContext) -> Any:
        raise NotImplementedError


def build_encoder(cfg: EncoderConfig, input_size: int, where: str = "encoder") -> Encoder:
    return registry.get("encoder", cfg.type, where=f"{where}.type")(cfg, input_size)
