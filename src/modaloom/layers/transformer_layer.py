"""One transformer block: self-attention, optional cross-attention, feed-forward; pre- or post-norm."""

from __future__ import annotations

import torch
from torch import nn

from modaloom.layers.attention import KVCache, MultiHeadAttention
from modaloom.layers.feed_forward import FeedForward
from modaloom.layers.norms import make_norm
from modaloom.model_config import EncoderConfig


class TransformerLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, cross_attention: bool = False, memory_size: int | None = None):
        super().__init__()
        attn_dropout = cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout
        norm_bias = cfg.bias

        def attention(kv_input_size: int | None = None) -> MultiHeadAttention:
            return MultiHeadAttention(
                cfg.hidden_size, cfg.heads_num, cfg.head_dim, cfg.kv_heads_num or None, bias=cfg.bias,
                scale=cfg.attention_scale, dropout=attn_dropout, kv_input_size=kv_input_size,
            )

        self.pre_norm = cfg.norm_position == "pre"
        self.self_attn = attention()
        self.self_attn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, norm_bias)
        self.cross_attn = attention(memory_size) if cross_attention else None
        self.cross_attn_norm = (
            make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, norm_bias) if cross_attention else None
        )
        self.feed_forward = FeedForward(
            cfg.hidden_size, cfg.feedforward_size, cfg.act, gated=cfg.feed_forward == "gated", bias=cfg.bias,
        )
        self.feed_forward_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, norm_bias)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def _residual(self, x: torch.Tensor, norm: nn.Module, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory: torch.Tensor | None = None,
        memory_bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = self._residual(
            x, self.self_attn_norm,
            lambda h: self.self_attn(h, bias=self_bias, is_causal=is_causal, rotary=rotary, cache=cache),
        )
        if self.cross_attn is not None:
            x = self._residual(
                x, self.cross_attn_norm,
                lambda h: self.cross_attn(h, bias=memory_bias, memory=memory, cache=cross_cache,
                                          static_kv=cross_cache is not None),
            )
        return self._residual(x, self.feed_forward_norm, self.feed_forward)
