"""``clr``: contrastive alignment of the two streams of a dual model (CLIP, Radford et al. 2021).

The head: each stream's states are pooled (``poolings``: first, eos, mean, ... per stream), projected to
``feature_size`` (``projections.{0,1}``, bias when ``projection_bias``) and L2-normalised; the scale is
exp(``logit_scale``), clamped at 100 (log 100 on the parameter, as CLIP). The loss is chosen by name
(``loss``, default ``infonce``: CLIP's symmetric cross-entropy, gathered across ranks; ``siglip``: the
pairwise sigmoid loss); it receives the features and the scale, and the learnable ``logit_bias`` when the
loss declares ``uses_bias``. ``logit_scale_init`` left unset starts the scale where the loss says
(``logit_scale_init`` on its class). The pair of features is left in ``ctx.features[<target name>]``.
A token-wise loss (``loss: filip``, its class sets ``token_wise``) receives instead every token projected
and normalised with the same projections, with the streams' masks; the pooled pair is still left in
``ctx.features`` (retrieval and zero-shot read it). The pass's similarity logits, scale x f0 @ f1.T of this rank's
rows without gradient, are left in ``ctx.similarities[<target name>]``: ``itm`` mines hard negatives from them.
``streams`` picks the two streams of a model with more (default ``[0, 1]``): a third tower aligned to a trained
CLIP has a ``clr`` of its own over ``[0, 2]``. When a stream was skipped (its input not in the batch), the target
reports no loss and leaves no features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from modaloom import registry
from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.heads import pool
from modaloom.losses import build_loss
from modaloom.losses.infonce import ContrastiveScores
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import Target, TargetOutput

MAX_LOGIT_SCALE = math.log(100.0)
CLIP_LOGIT_SCALE_INIT = 2.6592  # log(1 / 0.07): where a loss that names no start of its own begins


@dataclass
class ContrastiveOptions:
    feature_size: int = 512  # width of the compared features (each tower's projection output)
    projection: bool = True  # a linear projection per tower (false: the pooled states themselves)
    projection_bias: bool = False  # bias in those projections
    logit_scale_init: float | None = None  # None: the loss's own (infonce log(1 / 0.07) as CLIP, siglip log 10)
    learnable_scale: bool = True  # train the logit scale (false: fixed at its start)
    poolings: list[str] = field(default_factory=lambda: ["first", "first"])  # per stream
    eos_id: int | None = None  # 'eos' pooling: first position of this id; None: the largest id (CLIP legacy)
    loss: str = "infonce"  # registered contrastive loss: infonce, siglip, filip
    streams: list[int] = field(default_factory=lambda: [0, 1])  # the two compared streams of the dual model

    def check(self) -> None:
        if len(self.poolings) != 2:
            raise ConfigError(f"clr needs one pooling per stream (2), got poolings {self.poolings}")
        if len(self.streams) != 2 or self.streams[0] == self.streams[1] or min(self.streams) < 0:
            raise ConfigError(f"clr streams must be two different stream indices, got {self.streams}")


def initial_logit_scale(cfg: TargetConfig) -> float:
    """Where ``logit_scale`` starts: the config's ``logit_scale_init``, else the chosen loss's default."""
    if cfg.logit_scale_init is not None:
        return float(cfg.logit_scale_init)
    loss = registry.get("loss", cfg.loss, where=f"targets.{cfg.label}.loss")
    return float(getattr(loss, "logit_scale_init", CLIP_LOGIT_SCALE_INIT))


def direction_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean()


def contrastive_metrics(prefix: str, scores: ContrastiveScores, rows: torch.Tensor,
                        scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss, accuracy both ways, pair count and scale of a contrastive target (``clr`` and ``moco``)."""
    with torch.no_grad():
        acc_01 = direction_accuracy(scores.logits_01, scores.labels)
        acc_10 = direction_accuracy(scores.logits_10, scores.labels)
    return {
        f"{prefix}_loss": scores.loss.detach(),
        f"{prefix}_accuracy": (acc_01 + acc_10) / 2,
        f"{prefix}_count": torch.tensor(2 * rows.shape[0], device=rows.device),
        f"{prefix}_accuracy_0to1": acc_01,
        f"{prefix}_accuracy_1to0": acc_10,
        f"{prefix}_logit_scale": scale.detach(),
    }


@register("target", "clr")
class Contrastive(Target):
    """Parameters: ``projections.{0,1}.weight`` (feature_size, stream width) [+ bias], ``logit_scale`` (),
    ``logit_bias`` () when the loss uses one (siglip)."""

    Options = ContrastiveOptions
    encoder_mode = "dual"  # each stream encoded alone (a VLMo model as a dual encoder)

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        self.pair = tuple(cfg.streams)
        widths = tuple(hidden_size) if isinstance(hidden_size, (tuple, list)) else (hidden_size,) * (max(self.pair) + 1)
        if max(self.pair) >= len(widths):
            raise ConfigError(f"targets.{cfg.label}.streams {list(self.pair)}: the model has {len(widths)} streams")
        sizes = tuple(widths[i] for i in self.pair)
        if cfg.projection:
            self.projections = nn.ModuleList(
                nn.Linear(size, cfg.feature_size, bias=cfg.projection_bias) for size in sizes
            )
        else:
            if sizes[0] != sizes[1]:
                raise ConfigError(f"clr without projection needs equal stream widths, got {sizes}")
            self.projections = None
        self.logit_scale = nn.Parameter(torch.tensor(initial_logit_scale(cfg)), requires_grad=cfg.learnable_scale)
        self.loss = build_loss(cfg)
        if getattr(self.loss, "uses_bias", False):
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.logit_bias_init)))
        else:
            self.register_parameter("logit_bias", None)
        streams = getattr(model_cfg.embedding, "streams", None)
        self.id_keys = [(streams[i].input_key or "input_ids") for i in self.pair] if streams else ["input_ids"] * 2

    def select(self, hidden, mask) -> tuple[tuple, tuple]:
        """The states and masks of the two compared streams (``streams``), in that order."""
        if not isinstance(hidden, (tuple, list)) or len(hidden) <= max(self.pair):
            raise ConfigError("the clr target needs a dual model (two streams: embedding dual, encoder dual)")
        masks = mask if isinstance(mask, (tuple, list)) else (mask,) * len(hidden)
        return tuple(hidden[i] for i in self.pair), tuple(masks[i] for i in self.pair)

    def features(self, hidden, mask, batch) -> list[torch.Tensor]:
        """The two streams' normalised features (B, feature_size), in fp32."""
        hidden, masks = self.select(hidden, mask)
        out = []
        for i, how in enumerate(self.cfg.poolings):
            ids = batch.get(self.id_keys[i]) if how == "eos" else None
            pooled = pool(hidden[i], masks[i], how, input_ids=ids, eos_id=self.cfg.eos_id)
            if self.projections is not None:
                pooled = self.projections[i](pooled)
            out.append(F.normalize(pooled.float(), dim=-1))
        return out

    def token_features(self, hidden, mask) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each stream's tokens projected and L2-normalised (B, L, feature_size) in fp32, with its mask."""
        hidden, masks = self.select(hidden, mask)
        out = []
        for i in range(2):
            tokens = hidden[i] if self.projections is None else self.projections[i](hidden[i])
            out.append((F.normalize(tokens.float(), dim=-1), masks[i]))
        return out

    def scale(self) -> torch.Tensor:
        return self.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        if any(h is None for h in self.select(hidden, mask)[0]):
            return TargetOutput()  # a compared stream's input is not in this batch
        f0, f1 = self.features(hidden, mask, batch)
        ctx.features[self.cfg.label] = (f0.detach(), f1.detach())
        scale = self.scale()
        with torch.no_grad():
            ctx.similarities[self.cfg.label] = scale * f0 @ f1.T
        if getattr(self.loss, "token_wise", False):
            (t0, m0), (t1, m1) = self.token_features(hidden, mask)
            scores = self.loss(t0, m0, t1, m1, scale)
        elif self.logit_bias is None:
            scores = self.loss(f0, f1, scale)
        else:
            scores = self.loss(f0, f1, scale, self.logit_bias.float())
        metrics = contrastive_metrics(self.cfg.label, scores, f0, scale)
        if self.logit_bias is not None:
            metrics[f"{self.cfg.label}_logit_bias"] = self.logit_bias.detach().float()
        return TargetOutput(scores.loss, metrics, scores.logits_01)
