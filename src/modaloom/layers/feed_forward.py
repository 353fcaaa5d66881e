"""Position-wise feed-forward: dense (in -> act -> out) or gated (act(gate) * in -> out, as T5 v1.1/LLaMA)."""

from __future__ import annotations

import torch
from torch import nn

from modaloom.layers.activations import activation


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, inner_size: int, act: str, gated: bool = False, bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.linear_in = nn.Linear(hidden_size, inner_size, bias=bias)
        self.linear_gate = nn.Linear(hidden_size, inner_size, bias=bias) if gated else None
        self.linear_out = nn.Linear(inner_size, hidden_size, bias=bias)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear_gate is not None:
            h = self.act(self.linear_gate(x)) * self.linear_in(x)
        else:
            h = self.act(self.linear_in(x))
        return self.linear_out(self.dropout(h))
