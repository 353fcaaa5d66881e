"""Heads: the modules between a stack's hidden states and a loss (pooling, poolers, vocabulary projections).

Heads hold parameters and compute logits or features; losses (``modaloom.losses``) turn those into a
number; targets pair the two. Parameter names are part of the checkpoint format: a head keeps the names
its target had before heads were split out (``pooler.weight``, ``head.dense.weight``, ``head.output.weight``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modaloom.layers.activations import activation
from modaloom.layers.norms import make_norm


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str,
         input_ids: torch.Tensor | None = None, eos_id: int | None = None) -> torch.Tensor:
    """Reduce (B, L, H) to (B, H): first token, last real token, mean or max over real tokens, or EOS."""
    if how == "first":
        return hidden[:, 0]
    if how == "none":
        return hidden
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = mask.bool()
    if how == "last":
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
    if how == "eos":
        if input_ids is None:
            raise ValueError("eos pooling needs input_ids")
        if eos_id is None:
            index = input_ids.argmax(-1)  # CLIP's convention: EOS has the largest id
        else:
            index = (input_ids == eos_id).int().argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    raise ValueError(f"unknown pooling {how!r}")


class TanhPooler(nn.Linear):
    """BERT's pooler: dense + tanh on the pooled vector (parameters ``weight``, ``bias``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


class VocabularyHead(nn.Module):
    """Optional transform (dense, act, norm) then the vocabulary projection (tieable to word embeddings).

    Reads ``transform``, ``act``, ``norm``, ``norm_eps``, ``output_bias`` and ``scale_before_output`` from
    the target's options.
    """

    def __init__(self, cfg: Any, hidden_size: int, out_size: int, vocab_size: int) -> None:
        super().__init__()
        if cfg.transform:
            self.dense = nn.Linear(hidden_size, out_size)
            self.act = activation(cfg.act)
            self.norm = make_norm(cfg.norm, out_size, cfg.norm_eps)
        else:
            self.dense = None
            out_size = hidden_size
        self.output = nn.Linear(out_size, vocab_size, bias=cfg.output_bias)
        self.scale = hidden_size ** -0.5 if cfg.scale_before_output else 1.0

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """The rows the output layer reads: transformed and scaled (a chunked loss projects them itself)."""
        if self.dense is not None:
            h = self.norm(self.act(self.dense(h)))
        if self.scale != 1.0:
            h = h * self.scale
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(h))
