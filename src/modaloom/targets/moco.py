"""``moco``: ``clr`` with momentum towers and queues of past keys (MoCo, He et al. 2020; WenLan/BriVL, Huo et al. 2021).

The head, its parameters and options are ``clr``'s (``projections``, ``logit_scale``, ``poolings``, ...), so a
model trained with ``moco`` exports the weights a ``clr`` model has. Two options more: ``momentum`` (EMA decay
of the key towers) and ``queue_size`` (past keys kept per stream). While training, the ``MomentumContrast``
after-step hook that the target hands the task (``step_hooks``) owns a frozen copy of the embedding, the
encoder and the projections; each forward computes the keys with it (no gradient, eval mode: no dropout),
gathers them over ranks and scores the queries against them plus the queues (loss ``moco_infonce``). After
each optimizer step the hook moves the copy towards the trained weights by EMA and pushes the step's keys
into the queues, the same rows on every rank. Copy, queues and pointers are the hook's checkpointed state.
The copy encodes in the target's view (``dual`` for a ``modality_experts`` encoder, as ``clr`` reads it).
Without the hook (evaluation, a loaded model) the target scores in-batch pairs only, as ``clr`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom import registry
from modaloom.collectives import gather_features, rank_offset
from modaloom.context import ForwardContext
from modaloom.errors import CheckpointError, ConfigError
from modaloom.heads import pool
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import TargetOutput
from modaloom.targets.contrastive import Contrastive, ContrastiveOptions, contrastive_metrics
from modaloom.train.momentum import FeatureQueue, ema_update, momentum_copy


@dataclass
class MomentumContrastOptions(ContrastiveOptions):
    momentum: float = 0.995  # EMA decay of the key towers (WenLan: 0.99, MoCo: 0.999)
    queue_size: int = 4096  # past keys kept per stream as extra negatives; 0: in-batch keys only
    loss: str = "moco_infonce"  # registered loss; moco_infonce adds the queued keys as negatives

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"moco momentum must be in [0, 1], got {self.momentum}")
        if self.queue_size < 0:
            raise ConfigError(f"moco queue_size must be >= 0, got {self.queue_size}")


@register("target", "moco")
class MomentumContrastTarget(Contrastive):
    """``clr``'s parameters; the momentum towers and queues live in the hook from ``step_hooks``."""

    Options = MomentumContrastOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        if list(cfg.streams) != [0, 1]:  # the momentum copy encodes and pools streams 0 and 1
            raise ConfigError(f"targets.{cfg.label}.streams {cfg.streams}: a moco target compares streams [0, 1] only")
        if not getattr(self.loss, "takes_keys", False):
            valid = [n for n in registry.names("loss") if getattr(registry.get("loss", n), "takes_keys", False)]
            raise ConfigError(f"targets.{cfg.label}.loss {cfg.loss!r} cannot score momentum keys and queues; "
                              f"valid choices for a moco target: {valid}")
        width = hidden_size[0] if isinstance(hidden_size, (tuple, list)) else hidden_size
        self.feature_dim = cfg.feature_size if cfg.projection else int(width)
        self.momentum_hook: MomentumContrast | None = None  # a plain attribute: not in the state dict

    def step_hooks(self, model: nn.Module) -> list[Any]:
        """The after-step hook that owns this target's momentum towers and queues (bound to the target)."""
        self.momentum_hook = MomentumContrast(model, self)
        return [self.momentum_hook]

    def key_features(self, hidden, mask, batch, projections: nn.ModuleList | None) -> list[torch.Tensor]:
        """Pooled, projected (by ``projections``: the momentum copy) and normalised features, in fp32."""
        masks = mask if isinstance(mask, (tuple, list)) else (mask, mask)
        out = []
        for i, how in enumerate(self.cfg.poolings):
            ids = batch.get(self.id_keys[i]) if how == "eos" else None
            pooled = pool(hidden[i], masks[i], how, input_ids=ids, eos_id=self.cfg.eos_id)
            if projections is not None:
                pooled = projections[i](pooled)
            out.append(F.normalize(pooled.float(), dim=-1))
        return out

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        q0, q1 = self.features(hidden, mask, batch)
        ctx.features[self.cfg.label] = (q0.detach(), q1.detach())
        scale = self.scale()
        hook = self.momentum_hook
        if hook is not None and self.training and torch.is_grad_enabled():
            keys0, keys1 = hook.keys(batch)
            queue0, queue1 = hook.queues[0].features(), hook.queues[1].features()
            hook.pending.append((keys0, keys1))
        else:  # in-batch pairs only: clr's InfoNCE
            keys0, keys1 = gather_features(q0), gather_features(q1)
            queue0 = queue1 = q0.new_zeros(0, q0.shape[1])
        offset = rank_offset(q0.shape[0], q0.device) if keys0.shape[0] != q0.shape[0] else 0
        scores = self.loss(q0, q1, keys0, keys1, queue0, queue1, scale, offset)
        metrics = contrastive_metrics(self.cfg.label, scores, q0, scale)
        metrics[f"{self.cfg.label}_queue_filled"] = torch.tensor(float(queue0.shape[0]), device=q0.device)
        return TargetOutput(scores.loss, metrics, scores.logits_01)


class MomentumContrast:
    """After-step hook of a ``moco`` target: EMA key towers, one key queue per stream, pending keys.

    ``queues[0]`` holds stream-0 keys (negatives for stream-1 queries), ``queues[1]`` stream-1 keys.
    """

    def __init__(self, model: nn.Module, target: MomentumContrastTarget) -> None:
        self.name = f"momentum_contrast:{target.cfg.label}"
        self.decay = float(target.cfg.momentum)
        self.target = target
        self.online: list[nn.Module] = [model.embedding, model.encoder]
        if target.projections is not None:
            self.online.append(target.projections)
        self.towers = [momentum_copy(m) for m in self.online]
        self.queues = [FeatureQueue(target.cfg.queue_size, target.feature_dim) for _ in range(2)]
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # this step's gathered keys

    def _place(self) -> None:
        """Follow the trained weights to their device (the Trainer places the model after building hooks)."""
        param = next(self.online[0].parameters())
        if type(param).__name__ == "DTensor":
            raise ConfigError(f"target {self.target.cfg.label!r} (moco) keeps full momentum copies; "
                              f"use train.parallel=ddp or none, not fsdp")
        if self.queues[0].buffer.device != param.device:
            self.towers = [t.to(param.device) for t in self.towers]
            self.queues = [q.to(param.device) for q in self.queues]

    @torch.no_grad()
    def keys(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams' momentum keys for ``batch``, gathered over ranks in rank order (no gradient)."""
        self._place()
        encoder = self.towers[1]
        # the target's view (dual), not the encoder's default: a VLMo encoder would otherwise fuse the streams
        ctx = ForwardContext(encoder_mode=encoder.resolve_mode(self.target.encoder_mode))
        x, mask = self.towers[0](batch, ctx)
        hidden = encoder(x, mask, batch, ctx)
        projections = self.towers[2] if len(self.towers) > 2 else None
        k0, k1 = self.target.key_features(hidden, mask, batch, projections)
        return gather_features(k0), gather_features(k1)

    def __call__(self, trainer: Any) -> None:
        """EMA step of the towers, then the step's keys into the queues (a non-finite batch's are dropped)."""
        self._place()
        for tower, online in zip(self.towers, self.online, strict=True):
            ema_update(tower, online, self.decay)
        pending, self.pending = self.pending, []
        for keys0, keys1 in pending:
            if bool(torch.isfinite(keys0).all()) and bool(torch.isfinite(keys1).all()):
                self.queues[0].push(keys0)
                self.queues[1].push(keys1)

    def state_dict(self) -> dict[str, Any]:
        return {"towers": [tower_tensors(t) for t in self.towers], "queues": [q.state_dict() for q in self.queues]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, (tower, saved) in enumerate(zip(self.towers, state["towers"], strict=True)):
            own = tower_tensors(tower)
            if set(own) != set(saved) or any(tuple(own[k].shape) != tuple(saved[k].shape) for k in own):
                raise CheckpointError(f"the momentum copy {i} of target {self.target.cfg.label!r} in the checkpoint "
                                      f"does not match this model; resume with the model the run started with")
            with torch.no_grad():
                for key, tensor in own.items():
                    tensor.copy_(saved[key])
        for queue, saved in zip(self.queues, state["queues"], strict=True):
            queue.load_state_dict(saved)


def tower_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A momentum copy's parameters and buffers by name, each tensor once (tied ones share memory)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}
