"""Model = embedding + encoder [+ target embedding + decoder] + targets, built from a ModelConfig.

There is no model-family code here: BERT, GPT-2, T5, ViT, CLIP, S2T differ only in config. Weight tying is
declared by the parts (a target's ``tied_output`` and an embedding's ``word_embedding``) and switched on
by config flags. Saved models are a folder with ``config.json`` and ``model.safetensors``; no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modaloom import registry
from modaloom.atomic import atomic_write_json, replace_directory
from modaloom.batch import Batch
from modaloom.config_schema import Source, build, to_dict
from modaloom.context import ForwardContext
from modaloom.embeddings.base import build_embedding
from modaloom.encoders.base import build_encoder
from modaloom.errors import CheckpointError, ConfigError
from modaloom.lora import merge_lora_state
from modaloom.model_config import CONFIG_FORMAT, ModelConfig, model_section_from_saved
from modaloom.weights import load_weights_checked, read_weights, save_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ModelOutput:
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden: Any = None
    logits: dict[str, torch.Tensor] = field(default_factory=dict)


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embedding = build_embedding(cfg.embedding)
        self.encoder = build_encoder(cfg.encoder, self.embedding.output_size)
        self.tgt_embedding = None
        self.decoder = None
        if cfg.decoder is not None:
            self.tgt_embedding = build_embedding(cfg.tgt_embedding)
            decoder_cls = registry.get("decoder", cfg.decoder.type, where="decoder.type")
            self.decoder = decoder_cls(cfg.decoder, self.tgt_embedding.output_size, self.encoder.output_size)
        self.targets = nn.ModuleDict()
        for i, tcfg in enumerate(cfg.targets):
            cls = registry.get("target", tcfg.type, where=f"targets.{i}.type")
            self.targets[tcfg.label] = cls(tcfg, cfg, self._target_input_size(tcfg))
            mode = getattr(cls, "encoder_mode", None)
            if self.encoder.modes and mode is not None and mode not in self.encoder.modes:
                raise ConfigError(f"target {tcfg.label!r} reads the encoder in mode {mode!r}, encoder type "
                                  f"{cfg.encoder.type!r} has modes {list(self.encoder.modes)}")
        self.apply(self._init_weights)
        self.tie_weights()
        # the optimizer step the loss weights are read at (``TargetConfig.weight_at``), set by the Trainer through
        # ``LossWeightClock`` before each step, never counted here; None outside training. The weights at that
        # step sit in a buffer (not saved), so the forward reads a tensor, not a Python number that changes
        # every step (which torch.compile would guard on)
        self.step: int | None = None
        self.register_buffer("loss_weights", torch.tensor([t.weight_at(None) for t in cfg.targets]),
                             persistent=False)

    def set_step(self, step: int | None) -> None:
        """Weigh the targets' losses as at optimizer step ``step`` (0-based; None: the schedules' end)."""
        self.step = step
        weights = [t.weight_at(step) for t in self.config.targets]
        with torch.no_grad():
            self.loss_weights.copy_(torch.tensor(weights, dtype=self.loss_weights.dtype))

    def step_hooks(self, model: nn.Module) -> list[Any]:
        """The hook that tells the model the Trainer's step, when a target's weight follows a schedule."""
        if any(t.weight_schedule is not None for t in self.config.targets):
            return [LossWeightClock(self)]
        return []

    def _target_input_size(self, tcfg) -> int:
        if self.decoder is not None and tcfg.source != "encoder":
            return self.decoder.output_size
        return self.encoder.output_size

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif module is not self and hasattr(module, "weight") and isinstance(module.weight, nn.Parameter):
            if module.weight.dim() == 1:  # norms
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            else:  # embedding parts own their tables as plain parameters
                nn.init.normal_(module.weight, std=std)

    def tie_weights(self) -> None:
        """Share the word tables named by config flags; parts declare which modules can be tied."""
        cfg = self.config
        if cfg.share_embedding and self.tgt_embedding is not None:
            src, dst = self.embedding.word_embedding(), self.tgt_embedding.word_embedding()
            if src is None or dst is None:
                raise ConfigError("share_embedding needs a word part in both embedding and tgt_embedding")
            dst.weight = src.weight
        for label, target in self.targets.items():
            if not getattr(target.cfg, "tie_weights", False):
                continue
            output = target.tied_output()
            use_tgt = self.tgt_embedding is not None and target.cfg.source != "encoder"
            table = (self.tgt_embedding if use_tgt else self.embedding).word_embedding()
            if output is None or table is None:
                raise ConfigError(
                    f"target {label!r} sets tie_weights but {'it has no tieable output layer' if output is None else 'the embedding has no word part'}"
                )
            if output.weight.shape != table.weight.shape:
                raise ConfigError(
                    f"target {label!r} cannot tie its output {tuple(output.weight.shape)} to the word embedding "
                    f"{tuple(table.weight.shape)}"
                )
            output.weight = table.weight

    # ----------------------------------------------------------------------------------------- forward
    def encode(self, batch: Batch, ctx: ForwardContext | None = None, mode: str | None = None) -> tuple[Any, Any]:
        """Embedding + encoder: (hidden, real-token mask). ``mode`` picks the view of a multi-mode encoder
        (``modality_experts``: dual / fusion); None: ``ctx.encoder_mode``, else the encoder's default."""
        ctx = ForwardContext() if ctx is None else ctx
        x, mask = self.embedding(batch, ctx)
        return self._encoder_view(x, mask, batch, ctx, mode or ctx.encoder_mode)

    def _encoder_view(self, x: Any, mask: Any, batch: Batch, ctx: ForwardContext,
                      mode: str | None) -> tuple[Any, Any]:
        """The encoder over embedded ``x`` in ``mode`` (left in ``ctx.encoder_mode``), with its output's mask."""
        ctx.encoder_mode = self.encoder.resolve_mode(mode)
        hidden = self.encoder(x, mask, batch, ctx)
        return hidden, self.encoder.output_mask(mask, hidden, ctx)

    def decode(self, batch: Batch, memory: torch.Tensor, memory_mask: torch.Tensor | None,
               ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target embedding + decoder over ``decoder_input_ids`` attending to ``memory``."""
        y, ymask = self.tgt_embedding(batch, ctx.for_decoder())
        if ymask is not None and ctx.decoder_caches:
            ymask = None  # cached generation feeds one real token at a time
        return self.decoder(y, ymask, memory, memory_mask, ctx), ymask

    def forward(self, batch: Batch, ctx: ForwardContext | None = None) -> ModelOutput:
        ctx = ForwardContext() if ctx is None else ctx
        if ctx.encode is None:  # re-encodes other inputs in the view of the target calling it
            ctx.encode = lambda inputs: self.encode(inputs, mode=ctx.encoder_mode)
        x, emb_mask = self.embedding(batch, ctx)
        # ``hidden`` is the encoder's output in the caller's view, else in the first target's (no view computed twice)
        caller_mode, first = ctx.encoder_mode, next(iter(self.targets.values()), None)
        default_mode = self.encoder.resolve_mode(caller_mode or getattr(first, "encoder_mode", None))
        views = {default_mode: self._encoder_view(x, emb_mask, batch, ctx, default_mode)}
        hidden, mask = views[default_mode]
        enc_hidden, enc_mask = hidden, mask
        if self.decoder is not None and "decoder_input_ids" in batch:
            hidden, mask = self.decode(batch, enc_hidden, enc_mask, ctx)
        out = ModelOutput(hidden=hidden)
        total = None
        report_weights = len(self.targets) > 1
        for index, (label, target) in enumerate(self.targets.items()):
            mode = self.encoder.resolve_mode(getattr(target, "encoder_mode", None) or caller_mode)
            if mode not in views:  # a multi-mode encoder: each view once per forward, shared by its targets
                views[mode] = self._encoder_view(x, emb_mask, batch, ctx, mode)
            ctx.encoder_mode = mode
            if mode != default_mode:
                result = target(*views[mode], batch, ctx)
            elif target.cfg.source == "encoder":
                result = target(enc_hidden, enc_mask, batch, ctx)
            else:
                result = target(hidden, mask, batch, ctx)
            out.metrics.update(result.metrics)
            if result.logits is not None:
                out.logits[label] = result.logits
            if result.loss is not None:
                if ctx.step is not None:  # a caller's own step
                    weight = torch.tensor(target.cfg.weight_at(ctx.step), device=result.loss.device)
                else:
                    weight = self.loss_weights[index]
                if report_weights or target.cfg.weight_schedule is not None:
                    out.metrics.setdefault(f"{label}_loss", result.loss.detach())
                    out.metrics[f"{label}_weight"] = weight.detach().clone()
                weighted = result.loss * weight
                total = weighted if total is None else total + weighted
        out.loss = total
        if total is not None:
            out.metrics["loss"] = total.detach()
        return out

    # ------------------------------------------------------------------------------------ persistence
    def num_parameters(self, trainable_only: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` atomically (temp dir + rename)."""
        directory = Path(directory)
        with replace_directory(directory) as tmp:  # files other tools put beside the model are kept
            payload = {"format": CONFIG_FORMAT, "model": to_dict(self.config), **(extra or {})}
            atomic_write_json(tmp / CONFIG_NAME, payload)
            save_weights(merge_lora_state(self.state_dict()), tmp / WEIGHTS_NAME)  # LoRA merged: a plain model
        return directory

    def load_weights(self, path: str | Path, strict: bool = True) -> None:
        """Load a safetensors file, checking every key and shape before touching the model."""
        load_weights_checked(self, read_weights(path), str(path), strict=strict)


class LossWeightClock:
    """A Trainer hook that calls ``model.set_step`` with the step about to run, so that the targets' weight
    schedules are pure functions of the Trainer's step (a resumed run sets the same step: nothing to checkpoint)."""

    name = "loss_weight_clock"

    def __init__(self, model: Model) -> None:
        self.model = model

    def before_step(self, trainer: Any) -> None:
        self.model.set_step(int(trainer.step))

    def __call__(self, trainer: Any) -> None:
        """Nothing after the step: the next ``before_step`` sets the next one."""


def build_model(cfg: ModelConfig | dict[str, Any]) -> Model:
    """A randomly initialised Model from a ModelConfig (or a plain dict of the model section)."""
    if isinstance(cfg, dict):
        cfg = build(ModelConfig, cfg, Source(), "model")
    return Model(cfg)


def saved_model_config(data: dict[str, Any], origin: str) -> ModelConfig:
    """The ModelConfig of a saved ``config.json`` (any format this version or an earlier one wrote)."""
    return build(ModelConfig, model_section_from_saved(data), Source(origin), "model")


def load(directory: str | Path, map_location: str | torch.device | None = None) -> Model:
    """Restore a model saved with ``Model.save`` (or exported by ``modaloom convert``)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a modaloom model folder: no {CONFIG_NAME}")
    data = json.loads(config_path.read_text(encoding="utf-8"))
    cfg = saved_model_config(data, str(config_path))
    model = Model(cfg)
    model.load_weights(directory / WEIGHTS_NAME)
    if map_location is not None:
        model.to(map_location)
    return model
