"""``moco_infonce``: InfoNCE against momentum keys plus a queue of past keys (MoCo; WenLan/BriVL, Huo et al. 2021).

Each stream's query (this rank's rows, with gradient) is scored against the other stream's momentum keys of
the whole batch (every rank's rows, no gradient) followed by that stream's queue of past keys: stream-0
queries against ``[keys1; queue1]``, stream-1 queries against ``[keys0; queue0]``. The positive of local row
``i`` is key row ``offset + i``; the loss is the mean of the two cross-entropies. Used by the ``moco`` target,
which computes the keys and owns the queues; without keys or queues it is CLIP's InfoNCE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.losses.infonce import ContrastiveScores
from modaloom.registry import register


@register("loss", "moco_infonce")
class MomentumInfoNCE(nn.Module):
    """A loss for the ``moco`` target: ``forward(q0, q1, keys0, keys1, queue0, queue1, scale, offset)``."""

    takes_keys = True  # the moco target refuses a loss without this signature

    def __init__(self, cfg: Any) -> None:
        super().__init__()

    def forward(self, q0: torch.Tensor, q1: torch.Tensor, keys0: torch.Tensor, keys1: torch.Tensor,
                queue0: torch.Tensor, queue1: torch.Tensor, scale: torch.Tensor, offset: int = 0) -> ContrastiveScores:
        with torch.autocast(q0.device.type, enabled=False):  # similarities and softmax in fp32
            candidates1 = torch.cat([keys1.float(), queue1.float()])
            candidates0 = torch.cat([keys0.float(), queue0.float()])
            logits_01 = scale * q0.float() @ candidates1.T
            logits_10 = scale * q1.float() @ candidates0.T
            labels = torch.arange(q0.shape[0], device=q0.device) + offset
            loss = (F.cross_entropy(logits_01, labels) + F.cross_entropy(logits_10, labels)) / 2
        return ContrastiveScores(loss, logits_01, logits_10, labels)
