"""Multi-head attention on torch's scaled_dot_product_attention, with grouped-query heads and a kv cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.layers.positions import apply_rotary


@dataclass
class KVCache:
    """Keys and values seen so far by one attention layer, (B, H_kv, T, D) each."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.key is None else self.key.shape[2]

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.key is not None:
            key = torch.cat([self.key, key], dim=2)
            value = torch.cat([self.value, value], dim=2)
        self.key, self.value = key, value
        return key, value

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        if self.key is not None:
            self.key = self.key.index_select(0, index)
            self.value = self.value.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention. Projections are separate linears (q, k, v, out) so checkpoints map 1:1."""

    def __init__(self, hidden_size: int, heads: int, head_dim: int, kv_heads: int | None = None,
                 bias: bool = True, scale: bool = True, dropout: float = 0.0,
                 kv_input_size: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.kv_heads = kv_heads or heads
        self.head_dim = head_dim
        self.scale = None if scale else 1.0
        self.dropout = dropout
        kv_in = kv_input_size or hidden_size
        self.query = nn.Linear(hidden_size, heads * head_dim, bias=bias)
        self.key = nn.Linear(kv_in, self.kv_heads * head_dim, bias=bias)
        self.value = nn.Linear(kv_in, self.kv_heads * head_dim, bias=bias)
        self.output = nn.Linear(heads * head_dim, hidden_size, bias=bias)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory: torch.Tensor | None = None,
        cache: KVCache | None = None,
        static_kv: bool = False,
    ) -> torch.Tensor:
        """``bias`` is an additive float mask broadcastable to (B, H, Lq, Lk); ``memory`` makes it cross-attention.

        With ``static_kv`` (cross-attention during generation) the cache holds the projected memory once.
        """
        q = self._split(self.query(x), self.heads)
        if static_kv and cache is not None and cache.key is not None:
            k, v = cache.key, cache.value
        else:
            source = x if memory is None else memory
            k = self._split(self.key(source), self.kv_heads)
            v = self._split(self.value(source), self.kv_heads)
            if rotary is not None:
                q_cos, q_sin = rotary
                k_len = k.shape[2]
                q = apply_rotary(q, q_cos[-q.shape[2]:], q_sin[-q.shape[2]:])
                k = apply_rotary(k, q_cos[-k_len:], q_sin[-k_len:])
            if cache is not None:
                k, v = (cache.append(k, v) if not static_kv else (k, v))
                if static_kv:
                    cache.key, cache.value = k, v
        if self.kv_heads != self.heads:
            repeat = self.heads // self.kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and bias is None,
            scale=self.scale,
        )
        b, _, n, _ = out.shape
        return self.output(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))
