"""``gatedcnn``: Dauphin et al. 2017, Language Modeling with Gated Convolutional Networks.

Each layer is a causal 1-D convolution (``kernel_size`` wide, left-padded by kernel_size - 1 so position t
sees t - k + 1 .. t only) producing 2 * hidden_size channels, halved by a gated linear unit:
``conv * sigmoid(gate)``. The first layer maps the embedding width to ``hidden_size``; a residual
connection is added every ``block_size`` layers after it, as TencentPretrain's ``gatedcnn``.
TencentPretrain keeps conv and gate as two Conv2d's with separate biases; here they are one Conv1d whose
first half of output channels is the conv and second half the gate (a concatenation converts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.encoders.base import Encoder
from modaloom.errors import ConfigError
from modaloom.model_config import EncoderConfig
from modaloom.registry import register


class GatedConv(nn.Module):
    """Causal Conv1d to 2 * out channels, then GLU. Input and output are (B, C, L)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.left_pad = kernel_size - 1
        self.conv = nn.Conv1d(in_channels, 2 * out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.glu(self.conv(nn.functional.pad(x, (self.left_pad, 0))), dim=1)


@dataclass
class GatedCNNOptions:
    kernel_size: int = 4  # width of each causal convolution
    block_size: int = 2  # a residual connection every block_size layers


@register("encoder", "gatedcnn")
class GatedCNNEncoder(Encoder):
    """``layers_num`` gated causal conv layers; parameters ``layers.{i}.conv.{weight,bias}``."""

    Options = GatedCNNOptions

    def __init__(self, cfg: EncoderConfig, input_size: int) -> None:
        super().__init__(cfg, input_size)
        if cfg.kernel_size < 1 or cfg.block_size < 1:
            raise ConfigError(
                f"gatedcnn needs kernel_size >= 1 and block_size >= 1, got {cfg.kernel_size} and {cfg.block_size}"
            )
        widths = [input_size] + [cfg.hidden_size] * cfg.layers_num
        self.layers = nn.ModuleList(
            GatedConv(widths[i], cfg.hidden_size, cfg.kernel_size) for i in range(cfg.layers_num)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: dict[str, torch.Tensor],
                ctx: ForwardContext) -> torch.Tensor:
        keep = mask.bool().unsqueeze(1).to(x.dtype) if mask is not None else None  # (B, 1, L)
        h = x.transpose(1, 2)
        if keep is not None:
            h = h * keep  # padding contributes zeros, like the causal left padding
        h = self.layers[0](h)
        residual = h
        for i, layer in enumerate(self.layers[1:]):
            if keep is not None:
                h = h * keep
            h = layer(h)
            if (i + 1) % self.cfg.block_size == 0:
                h = h + residual
                residual = h
        if keep is not None:
            h = h * keep
        return self.dropout(h.transpose(1, 2))
