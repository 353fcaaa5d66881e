"""``infonce``: CLIP's symmetric contrastive loss (Radford et al. 2021; van den Oord et al. 2018).

Given the two streams' L2-normalised features and a scale, the logits are scale times cosine similarity and
the loss is the mean of the cross-entropies stream 0 -> stream 1 and stream 1 -> stream 0, the matching pair
on the diagonal. With ``gather`` under torch.distributed every rank scores its rows against the features of
all ranks (gathered with gradients to the local rows) and its labels are offset by the rows of the ranks
before it, as open_clip does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.collectives import gather_features, rank_offset
from modaloom.registry import register


@dataclass
class InfoNCEOptions:
    gather: bool = True  # score against the features of every rank when distributed


@dataclass
class ContrastiveScores:
    """What a contrastive loss returns: the loss, the local rows' logits both ways and their labels."""

    loss: torch.Tensor
    logits_01: torch.Tensor
    logits_10: torch.Tensor
    labels: torch.Tensor


@register("loss", "infonce")
class InfoNCE(nn.Module):
    Options = InfoNCEOptions
    logit_scale_init = 2.6592  # log(1 / 0.07), as CLIP

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.gather = bool(getattr(cfg, "gather", True))

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, scale: torch.Tensor) -> ContrastiveScores:
        if self.gather:
            all0, all1 = gather_features(f0), gather_features(f1)
            offset = rank_offset(f0.shape[0], f0.device) if all0.shape[0] != f0.shape[0] else 0
        else:
            all0, all1, offset = f0, f1, 0
        with torch.autocast(f0.device.type, enabled=False):  # similarities and softmax in fp32
            logits_01 = scale * f0.float() @ all1.float().T
            logits_10 = scale * f1.float() @ all0.float().T
            labels = torch.arange(f0.shape[0], device=f0.device) + offset
            loss = (F.cross_entropy(logits_01, labels) + F.cross_entropy(logits_10, labels)) / 2
        return ContrastiveScores(loss, logits_01, logits_10, labels)
