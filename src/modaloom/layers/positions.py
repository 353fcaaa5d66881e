"""Position schemes: sinusoidal tables, rotary embeddings, T5 relative bias and ALiBi."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(length: int, dim: int, offset: int = 0) -> torch.Tensor:
    """Fairseq/S2T layout: first half sin, second half cos, frequencies 10000^(-i/(half-1))."""
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
    pos = torch.arange(offset, offset + length, dtype=torch.float32)[:, None]
    table = torch.cat([torch.sin(pos * freqs), torch.cos(pos * freqs)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(length, 1)], dim=1)
    return table


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer), rotate-half layout as in LLaMA checkpoints on the Hub."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.dim = dim

    def forward(self, length: int, offset: int, device: torch.device, dtype: torch.dtype):
        pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq.to(device))
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of x (B, H, L, D); the rest pass through."""
    d = cos.shape[-1]
    if d == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot, rest = x[..., :d], x[..., d:]
    return torch.cat([rot * cos + _rotate_half(rot) * sin, rest], dim=-1)


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias, one learned scalar per (bucket, head), shared by all layers."""

    def __init__(self, heads: int, buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(buckets, heads)
        self.buckets = buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def _bucket(self, relative: torch.Tensor) -> torch.Tensor:
        buckets = self.buckets
        out = torch.zeros_like(relative)
        if self.bidirectional:
            buckets //= 2
            out = out + (relative > 0).long() * buckets
            relative = relative.abs()
        else:
            relative = -torch.clamp(relative, max=0)
        exact = buckets // 2
        is_small = relative < exact
        large = exact + (
            torch.log(relative.float().clamp(min=1) / exact)
            / math.log(self.max_distance / exact)
            * (buckets - exact)
        ).long()
        large = torch.clamp(large, max=buckets - 1)
        return out + torch.where(is_small, relative, large)

    def forward(self, q_len: int, k_len: int, device: torch.device, offset: int = 0) -> torch.Tensor:
        """Additive bias (1, H, q_len, k_len); ``offset`` is the query position of the first query."""
        q = torch.arange(offset, offset + q_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        values = self.embedding(self._bucket(k - q))
        return values.permute(2, 0, 1).unsqueeze(0)


def alibi_slopes(heads: int) -> torch.Tensor:
    """Per-head slopes of ALiBi (Press et al. 2022), including the non-power-of-two interleaving."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads))
    closest = 2 ** math.floor(math.log2(heads))
    extra = power_of_two(2 * closest)[0::2][: heads - closest]
    return torch.tensor(power_of_two(closest) + extra)


def alibi_bias(slopes: torch.Tensor, q_len: int, k_len: int, device: torch.device, offset: int = 0,
               causal: bool = True) -> torch.Tensor:
    """Additive bias (1, H, q_len, k_len): -slope * distance between query and key."""
    q = torch.arange(offset, offset + q_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    distance = (q - k).clamp(min=0) if causal else (q - k).abs()
    return -(slopes.to(device)[:, None, None] * distance[None]).unsqueeze(0)
