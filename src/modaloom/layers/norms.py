"""LayerNorm and RMSNorm (the latter is also T5's norm: no mean subtraction, no bias)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 for stability under bf16/fp16, as LLaMA and T5 do."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * y.to(dtype)


def make_norm(kind: str, size: int, eps: float, bias: bool = True) -> nn.Module:
    """A norm layer by config name: layernorm, rms / t5, or none (identity)."""
    if kind == "layernorm":
        return nn.LayerNorm(size, eps=eps, bias=bias)
    if kind in ("rms", "t5"):
        return RMSNorm(size, eps=eps)
    return nn.Identity()
