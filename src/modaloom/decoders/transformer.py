"""Transformer decoder: causal self-attention, cross-attention to the encoder output, kv caches."""

from __future__ import annotations

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.encoders.transformer import TransformerOptions, TransformerStack
from modaloom.layers.attention import KVCache
from modaloom.model_config import DecoderConfig
from modaloom.registry import register


@register("decoder", "transformer")
class TransformerDecoder(nn.Module):
    """Causal self-attention + cross-attention stack; reads ``decoder`` options (those of the transformer)."""

    Options = TransformerOptions

    def __init__(self, cfg: DecoderConfig, input_size: int, memory_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.stack = TransformerStack(cfg, input_size, cross_attention=True, memory_size=memory_size,
                                      bidirectional_bias=False)

    @property
    def output_size(self) -> int:
        return self.cfg.hidden_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor,
                memory_mask: torch.Tensor | None, ctx: ForwardContext) -> torch.Tensor:
        caches = ctx.decoder_caches
        cross = ctx.cross_caches
        past = caches[0].length if caches else 0
        return self.stack(x, mask, causal=True, memory=memory, memory_mask=memory_mask, caches=caches,
                          cross_caches=cross, past_length=past)

    def new_caches(self) -> tuple[list[KVCache], list[KVCache]]:
        n = self.cfg.layers_num
        return [KVCache() for _ in range(n)], [KVCache() for _ in range(n)]
