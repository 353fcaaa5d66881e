"""``clr``: CLIP's contrastive loss between the two streams of a dual model (Radford et al. 2021).

Each stream's states are pooled (``poolings``: first, eos, mean, ... per stream), projected to
``feature_size`` (``projections.{0,1}``, bias when ``projection_bias``) and L2-normalised. Logits are
exp(``logit_scale``) times cosine similarity, the scale clamped at 100 (log 100 on the parameter, as CLIP);
the loss is the mean of the cross-entropies stream0 -> stream1 and stream1 -> stream0 with the matching pair
on the diagonal. Under torch.distributed with ``gather``, every rank scores its rows against the features of
all ranks (gathered with gradients flowing to the local shard) and its labels are offset by the rows of the
ranks before it, as open_clip does.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from modaloom.errors import ConfigError
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import Target, TargetOutput, pool
from modaloom.train.distributed import gather_features

MAX_LOGIT_SCALE = math.log(100.0)


def rank_offset(local_rows: int, device: torch.device) -> int:
    """Rows held by the ranks before this one (0 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    size = torch.tensor([local_rows], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return int(sum(int(s.item()) for s in sizes[: dist.get_rank()]))


def direction_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean()


@register("target", "clr")
class Contrastive(Target):
    """Parameters: ``projections.{0,1}.weight`` (feature_size, stream width) [+ bias], ``logit_scale`` ()."""

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        if len(cfg.poolings) != 2:
            raise ConfigError(f"clr needs one pooling per stream (2), got poolings {cfg.poolings}")
        sizes = tuple(hidden_size) if isinstance(hidden_size, (tuple, list)) else (hidden_size, hidden_size)
        if cfg.projection:
            self.projections = nn.ModuleList(
                nn.Linear(size, cfg.feature_size, bias=cfg.projection_bias) for size in sizes
            )
        else:
            if sizes[0] != sizes[1]:
                raise ConfigError(f"clr without projection needs equal stream widths, got {sizes}")
            self.projections = None
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)),
                                        requires_grad=cfg.learnable_scale)
        streams = model_cfg.embedding.streams
        self.id_keys = [(s.input_key or "input_ids") for s in streams] if streams else ["input_ids", "input_ids"]

    def features(self, hidden, mask, batch) -> list[torch.Tensor]:
        """The two streams' normalised features (B, feature_size), in fp32."""
        if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
            raise ConfigError("the clr target needs a dual model (two streams: embedding dual, encoder dual)")
        masks = mask if isinstance(mask, (tuple, list)) else (mask, mask)
        out = []
        for i, how in enumerate(self.cfg.poolings):
            ids = batch.get(self.id_keys[i]) if how == "eos" else None
            pooled = pool(hidden[i], masks[i], how, input_ids=ids, eos_id=self.cfg.eos_id)
            if self.projections is not None:
                pooled = self.projections[i](pooled)
            out.append(F.normalize(pooled.float(), dim=-1))
        return out

    def forward(self, hidden, mask, batch, ctx) -> TargetOutput:
        f0, f1 = self.features(hidden, mask, batch)
        ctx[f"{self.cfg.label}_features"] = (f0.detach(), f1.detach())
        if self.cfg.gather:
            all0, all1 = gather_features(f0), gather_features(f1)
            offset = rank_offset(f0.shape[0], f0.device) if all0.shape[0] != f0.shape[0] else 0
        else:
            all0, all1, offset = f0, f1, 0
        with torch.autocast(f0.device.type, enabled=False):  # similarities and softmax in fp32
            scale = self.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
            logits_01 = scale * f0 @ all1.T
            logits_10 = scale * f1 @ all0.T
            labels = torch.arange(f0.shape[0], device=f0.device) + offset
            loss = (F.cross_entropy(logits_01, labels) + F.cross_entropy(logits_10, labels)) / 2
        with torch.no_grad():
            acc_01, acc_10 = direction_metrics(logits_01, labels), direction_metrics(logits_10, labels)
        prefix = self.cfg.label
        metrics = {
            f"{prefix}_loss": loss.detach(),
            f"{prefix}_accuracy": (acc_01 + acc_10) / 2,
            f"{prefix}_count": torch.tensor(2 * f0.shape[0], device=f0.device),
            f"{prefix}_accuracy_0to1": acc_01,
            f"{prefix}_accuracy_1to0": acc_10,
            f"{prefix}_logit_scale": scale.detach(),
        }
        return TargetOutput(loss, metrics, logits_01)
