"""``filip``: FILIP's token-wise late interaction (Yao et al. 2021), InfoNCE over token-level similarities.

The similarity of sequence i (one stream) to sequence j (the other stream) is the mean, over i's real
tokens, of each token's largest cosine with any real token of j. It is not symmetric, so the two directions
have their own logits: stream 0 -> stream 1 averages over stream-0 tokens, stream 1 -> stream 0 over
stream-1 tokens. The loss is the mean of the two cross-entropies, the matching pair on the diagonal.

Across ranks (``gather``) both streams' token features and masks are gathered (padded to the longest
sequence of any rank), with gradients to the local rows as ``infonce`` does. Memory: each rank holds the
global batch's tokens, B_global x (L0 + L1) x D, and the similarity tensor B_local x B_global x L0 x L1,
computed in chunks of ``chunk_rows`` rows of the other side so that the peak stays bounded. FILIP itself
shrinks D (256) and the token counts to afford this; ``gather: false`` scores each rank's batch alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.collectives import all_gather_objects, gather_features, is_distributed, rank_offset
from modaloom.errors import ConfigError
from modaloom.losses.infonce import ContrastiveScores
from modaloom.registry import register


@dataclass
class FilipOptions:
    gather: bool = True  # score against the token features of every rank when distributed
    chunk_rows: int = 64  # other-side sequences scored at once (bounds the B x B x L0 x L1 peak)

    def check(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be at least 1, got {self.chunk_rows}")


def real_mask(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The (B, L) bool mask of real tokens (all real when ``mask`` is None)."""
    if mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return mask.bool()


def late_interaction(a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor,
                     chunk_rows: int = 64) -> torch.Tensor:
    """(Na, Nb) similarities: for each real token of a_i its largest dot product with b_j's real tokens,
    averaged over a_i's real tokens. ``a`` (Na, La, D), ``b`` (Nb, Lb, D), masks bool (N, L)."""
    counts = a_mask.sum(1).clamp(min=1).to(a.dtype)
    rows = []
    for start in range(0, b.shape[0], chunk_rows):
        bc, bm = b[start:start + chunk_rows], b_mask[start:start + chunk_rows]
        sim = torch.einsum("ikd,jld->ijkl", a, bc)  # (Na, nb, La, Lb)
        sim = sim.masked_fill(~bm[None, :, None, :], float("-inf"))
        best = sim.max(-1).values  # (Na, nb, La)
        best = best.masked_fill(~a_mask[:, None, :], 0.0)
        rows.append(best.sum(-1) / counts[:, None])
    return torch.cat(rows, dim=1)


def _gather_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and masks of every rank, padded to the longest sequence of any rank (masked out)."""
    longest = max(all_gather_objects(tokens.shape[1]))
    if tokens.shape[1] < longest:
        extra = longest - tokens.shape[1]
        tokens = F.pad(tokens, (0, 0, 0, extra))
        mask = F.pad(mask, (0, extra), value=False)
    return gather_features(tokens), gather_features(mask.float()).bool()


@register("loss", "filip")
class Filip(nn.Module):
    """Token-wise InfoNCE. A target whose loss has ``token_wise`` passes per-token features and masks."""

    Options = FilipOptions
    token_wise = True

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.gather = bool(getattr(cfg, "gather", True))
        self.chunk_rows = int(getattr(cfg, "chunk_rows", 64))

    def forward(self, t0: torch.Tensor, m0: torch.Tensor | None, t1: torch.Tensor, m1: torch.Tensor | None,
                scale: torch.Tensor) -> ContrastiveScores:
        """``t0`` (B, L0, D), ``t1`` (B, L1, D): L2-normalised token features; masks (B, L), 1 = real."""
        m0, m1 = real_mask(t0, m0), real_mask(t1, m1)
        offset = 0
        all0, all_m0, all1, all_m1 = t0, m0, t1, m1
        if self.gather and is_distributed():
            all0, all_m0 = _gather_tokens(t0, m0)
            all1, all_m1 = _gather_tokens(t1, m1)
            offset = rank_offset(t0.shape[0], t0.device)
        with torch.autocast(t0.device.type, enabled=False):  # similarities and softmax in fp32
            logits_01 = scale * late_interaction(t0.float(), m0, all1.float(), all_m1, self.chunk_rows)
            logits_10 = scale * late_interaction(t1.float(), m1, all0.float(), all_m0, self.chunk_rows)
            labels = torch.arange(t0.shape[0], device=t0.device) + offset
            loss = (F.cross_entropy(logits_01, labels) + F.cross_entropy(logits_10, labels)) / 2
        return ContrastiveScores(loss, logits_01, logits_10, labels)
