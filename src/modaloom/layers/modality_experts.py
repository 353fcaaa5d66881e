"""A transformer block with one shared self-attention and a feed-forward expert per modality (VLMo's MoME).

Each expert is a norm plus a feed-forward (VLMo keeps a norm per expert beside its FFN). A forward receives the
sequence and its layout: consecutive runs of tokens, each run served by one named expert (``[("text", 12),
("vision", 17)]`` for a fused text + image sequence, ``[("vl", 29)]`` in a fusion layer, ``[("text", 12)]`` for
text alone). Attention spans the whole sequence; routing is by position, so no token is gathered or scattered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modaloom.layers.attention import MultiHeadAttention
from modaloom.layers.feed_forward import FeedForward
from modaloom.layers.norms import make_norm
from modaloom.model_config import EncoderConfig

Layout = Sequence[tuple[str, int]]  # (expert name, number of consecutive tokens it serves)


class ModalityExpert(nn.Module):
    """One modality's feed-forward and the norm beside it (``norm``, ``feed_forward``)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.feedforward_size, cfg.act,
                                        gated=cfg.feed_forward == "gated", bias=cfg.bias)


class ModalityExpertLayer(nn.Module):
    """Shared ``self_attn`` (+ ``self_attn_norm``), then ``experts[name]`` on the tokens the layout gives it."""

    def __init__(self, cfg: EncoderConfig, experts: Sequence[str]) -> None:
        super().__init__()
        attn_dropout = cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout
        self.pre_norm = cfg.norm_position == "pre"
        self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.heads_num, cfg.head_dim, cfg.kv_heads_num or None,
                                            bias=cfg.bias, scale=cfg.attention_scale, dropout=attn_dropout)
        self.self_attn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.experts = nn.ModuleDict({name: ModalityExpert(cfg) for name in experts})
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def _expert(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if name not in self.experts:
            raise KeyError(f"this layer has experts {list(self.experts)}, not {name!r}")
        expert = self.experts[name]
        if self.pre_norm:
            return x + self.dropout(expert.feed_forward(expert.norm(x)))
        return expert.norm(x + self.dropout(expert.feed_forward(x)))

    def forward(self, x: torch.Tensor, layout: Layout, self_bias: torch.Tensor | None = None) -> torch.Tensor:
        if sum(length for _, length in layout) != x.shape[1]:
            raise ValueError(f"layout {list(layout)} covers {sum(n for _, n in layout)} tokens, the sequence "
                             f"has {x.shape[1]}")
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.self_attn_norm(x), bias=self_bias))
        else:
            x = self.self_attn_norm(x + self.dropout(self.self_attn(x, bias=self_bias)))
        runs = torch.split(x, [length for _, length in layout], dim=1)
        return torch.cat([self._expert(run, name) for run, (name, _) in zip(runs, layout, strict=True)], dim=1)
