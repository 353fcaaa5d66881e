"""``siglip``: the pairwise sigmoid loss of SigLIP (Zhai et al. 2023).

Every (stream 0 row, stream 1 row) pair is an independent binary problem: logit = scale * cosine + bias,
label +1 for the matching pair (the diagonal) and -1 otherwise, loss = -sum log sigmoid(label * logit)
divided by the number of local stream-0 rows (open_clip's ``SigLipLoss`` normalisation). Under
torch.distributed (``ring``) no rank gathers the batch: each rank scores its stream-0 rows against its own
stream-1 rows, then against every other rank's stream-1 rows as they arrive one neighbour exchange at a
time (``collectives.ring_pass``), those blocks holding negatives only. Averaged over ranks by DDP this is
the one-process loss on the whole batch when ranks hold equal numbers of rows. The scale and the bias are
the ``clr`` target's parameters (``logit_scale``, ``logit_bias``): the loss only asks for the bias
(``uses_bias``) and says where the scale starts (``logit_scale_init``, log 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.collectives import ring_pass
from modaloom.losses.infonce import ContrastiveScores
from modaloom.registry import register


@dataclass
class SigLIPOptions:
    logit_bias_init: float = -10.0  # the paper's init: the many negatives start with a small loss
    ring: bool = True  # score against every rank's stream-1 features, passed around the ranks in a ring


def sigmoid_pair_loss(logits: torch.Tensor, diagonal_positive: bool) -> torch.Tensor:
    """Sum over a block of pairs of -log sigmoid(label * logit); labels +1 on the diagonal when it holds the
    matching pairs, -1 everywhere else."""
    labels = -torch.ones_like(logits)
    if diagonal_positive:
        labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum()


@register("loss", "siglip")
class SigLIP(nn.Module):
    Options = SigLIPOptions
    uses_bias = True  # the target adds a learnable ``logit_bias`` beside its ``logit_scale``
    logit_scale_init = math.log(10.0)

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.ring = bool(getattr(cfg, "ring", True))

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor) -> ContrastiveScores:
        rows = f0.shape[0]
        others = ring_pass(f1) if self.ring else []
        with torch.autocast(f0.device.type, enabled=False):  # similarities and sigmoids in fp32
            x0, scale, bias = f0.float(), scale.float(), bias.float()
            logits_01 = scale * x0 @ f1.float().T + bias
            total = sigmoid_pair_loss(logits_01, diagonal_positive=True)
            for block in others:
                total = total + sigmoid_pair_loss(scale * x0 @ block.float().T + bias, diagonal_positive=False)
            loss = total / rows
        labels = torch.arange(rows, device=f0.device)
        return ContrastiveScores(loss, logits_01, logits_01.T, labels)
