"""Speech embedding part: filterbank frames -> a 2^k times shorter sequence by strided 1-D convolutions.

The layout is Speech2Text's (fairseq S2T) convolutional subsampler, parameter for parameter: conv ``k`` is
``Conv1d(in, width_k, kernel_k, stride 2, padding kernel_k // 2)`` followed by a GLU over channels, which
halves the width; the inner widths are ``conv_channels`` and the last conv outputs ``2 * emb_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from modaloom.batch import Batch
from modaloom.context import ForwardContext
from modaloom.embeddings.base import EmbeddingPart, require
from modaloom.errors import ConfigError, DataError
from modaloom.model_config import EmbeddingConfig
from modaloom.registry import register


def subsampled_lengths(lengths: torch.Tensor, kernel_sizes: list[int]) -> torch.Tensor:
    """Frames left after each stride-2 conv with padding kernel // 2 (exact for odd and even kernels)."""
    for k in kernel_sizes:
        lengths = torch.div(lengths + 2 * (k // 2) - k, 2, rounding_mode="floor") + 1
    return lengths


@dataclass
class SpeechOptions:
    """Filterbank frames -> strided 1-D convolutions (fairseq S2T's subsampler)."""

    audio_feature_size: int = 80  # filterbank features per frame
    # output widths of the inner convs (the last one outputs 2 * emb_size for the GLU)
    conv_channels: list[int] = field(default_factory=lambda: [1024])
    # kernel of each stride-2 conv (one conv per entry)
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    scale_embedding: bool = False  # multiply by sqrt(emb_size) (S2T)

    def check(self) -> None:
        if len(self.conv_kernel_sizes) < 1:
            raise ConfigError("conv_kernel_sizes needs at least one kernel size")


@register("embedding", "speech")
class SpeechEmbedding(EmbeddingPart):
    """``input_features`` (B, T, F) -> (B, T', emb_size); mask from ``feature_mask`` lengths after subsampling.

    Parameters: ``convs.{k}`` (Conv1d weight (out, in, kernel) and bias). Scaled by sqrt(emb_size) when
    ``scale_embedding`` (S2T). Frames are assumed right-padded: the mask keeps the first length' frames.
    """

    Options = SpeechOptions
    creates_sequence = True

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        kernels = list(cfg.conv_kernel_sizes)
        if len(cfg.conv_channels) != len(kernels) - 1:
            raise ConfigError(
                f"speech: conv_channels lists the inner widths, one per conv but the last (which outputs "
                f"2 * emb_size = {2 * cfg.emb_size}); got {len(cfg.conv_channels)} for {len(kernels)} convs: "
                f"conv_channels {cfg.conv_channels}, conv_kernel_sizes {kernels}"
            )
        widths = [*cfg.conv_channels, 2 * cfg.emb_size]
        odd = [w for w in widths if w % 2]
        if odd:
            raise ConfigError(f"speech: conv widths must be even (a GLU halves them), got {widths}")
        self.kernel_sizes = kernels
        self.convs = nn.ModuleList()
        in_channels = cfg.audio_feature_size
        for width, k in zip(widths, kernels, strict=True):
            self.convs.append(nn.Conv1d(in_channels, width, k, stride=2, padding=k // 2))
            in_channels = width // 2
        self.scale = math.sqrt(cfg.emb_size) if cfg.scale_embedding else 1.0

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        features = require(batch, ctx.key("input_features"), "speech")
        if features.dim() != 3 or features.shape[-1] != self.cfg.audio_feature_size:
            raise DataError(
                f"speech expects input_features of shape (B, T, {self.cfg.audio_feature_size}) "
                f"(audio_feature_size), got {tuple(features.shape)}"
            )
        h = features.to(self.convs[0].weight.dtype).transpose(1, 2)
        for conv in self.convs:
            h = nn.functional.glu(conv(h), dim=1)
        h = h.transpose(1, 2)
        if self.scale != 1.0:
            h = h * self.scale
        frame_mask = batch.get(ctx.mask("feature_mask"))
        if frame_mask is None:
            return h, None
        lengths = subsampled_lengths(frame_mask.long().sum(1), self.kernel_sizes)
        positions = torch.arange(h.shape[1], device=h.device)
        return h, positions.unsqueeze(0) < lengths.unsqueeze(1)
