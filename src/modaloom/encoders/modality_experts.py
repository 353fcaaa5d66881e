"""``modality_experts``: VLMo's mixture-of-modality-experts transformer (Bao et al. 2022), one model that is both
a dual encoder (retrieval, contrastive) and a fusion encoder (image-text matching, masked LM).

Every layer has one self-attention shared by all modalities and a feed-forward expert per modality, named by
``modalities`` in the order of the ``dual`` embedding's streams (``[text, vision]``: stream 0 is text). The top
``fusion_layers`` layers also hold a ``vl`` expert. Two views (``modes``), chosen per call by
``ForwardContext.encoder_mode`` (``Model.forward`` sets it to each target's ``encoder_mode``; None: ``default_mode``):

- ``dual``: each stream is encoded alone through its own expert in every layer (no attention across
  modalities); returns the pair ``(h0, h1)`` with the embedding's masks, as the ``dual`` encoder does, so the
  ``clr`` target and the CLIP tasks read it unchanged;
- ``fusion``: the streams are concatenated (stream 0 first) and attend to each other; the bottom
  ``layers_num - fusion_layers`` layers route each token to its modality's expert, the top ones send every token
  to ``vl``; returns one (B, L0 + L1, H) sequence and, through ``output_mask``, the concatenated mask.

Parameters: ``layers.{i}.self_attn.*``, ``layers.{i}.self_attn_norm.*``, ``layers.{i}.experts.{name}.norm.*``,
``layers.{i}.experts.{name}.feed_forward.*``, ``final_norm.*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modaloom.config_schema import choice
from modaloom.context import ForwardContext
from modaloom.encoders.base import Encoder
from modaloom.encoders.transformer import TransformerOptions
from modaloom.errors import ConfigError
from modaloom.layers.masks import additive_mask
from modaloom.layers.modality_experts import Layout, ModalityExpertLayer
from modaloom.layers.norms import make_norm
from modaloom.model_config import EncoderConfig
from modaloom.registry import register

FUSION_EXPERT = "vl"
MODES = ("dual", "fusion")


@dataclass
class ModalityExpertsOptions(TransformerOptions):
    """The transformer's options (attention, feed-forward, norms) plus the experts and the fusion depth."""

    modalities: list[str] = field(default_factory=lambda: ["text", "vision"])  # expert of each embedding stream
    fusion_layers: int = 2  # top layers with the vl expert (VLMo-Base: 2 of 12)
    default_mode: str = choice("fusion", *MODES)  # the view when neither the caller nor the target names one

    def check(self) -> None:
        TransformerOptions.check(self)
        layers = self.layers_num  # type: ignore[attr-defined]
        if not 0 <= self.fusion_layers <= layers:
            raise ConfigError(f"encoder.fusion_layers must be within 0..layers_num ({layers}), got {self.fusion_layers}")
        if len(self.modalities) != 2 or len(set(self.modalities)) != 2 or FUSION_EXPERT in self.modalities:
            raise ConfigError(f"encoder.modalities names the expert of each of the 2 embedding streams, distinct and "
                              f"not {FUSION_EXPERT!r} (the fusion expert), got {self.modalities}")
        unsupported = {"mask": (self.mask, "fully_visible"), "position": (self.position, "none"),
                       "share_layers": (self.share_layers, False)}
        for key, (value, allowed) in unsupported.items():
            if value != allowed:
                raise ConfigError(f"encoder type 'modality_experts' supports {key}: {allowed} only, got {value!r} "
                                  f"(positions come from the embedding streams)")


def _key_mask(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()


@register("encoder", "modality_experts")
class ModalityExpertsEncoder(Encoder):
    """Shared attention, per-modality feed-forward experts, ``vl`` experts on top (see the module docstring)."""

    Options = ModalityExpertsOptions
    modes = MODES

    def __init__(self, cfg: EncoderConfig, input_size: int | tuple[int, int]) -> None:
        super().__init__(cfg, input_size)  # type: ignore[arg-type]
        sizes = tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size, input_size)
        if any(size != cfg.hidden_size for size in sizes):
            raise ConfigError(f"encoder type 'modality_experts' needs both embedding streams as wide as hidden_size "
                              f"{cfg.hidden_size}, got {sizes}; set each stream's emb_size to it")
        self.bottom = cfg.layers_num - cfg.fusion_layers
        self.layers = nn.ModuleList(
            ModalityExpertLayer(cfg, [*cfg.modalities, *([FUSION_EXPERT] if i >= self.bottom else [])])
            for i in range(cfg.layers_num)
        )
        self.final_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias) if cfg.use_final_norm else None

    @property
    def default_mode(self) -> str:
        return self.cfg.default_mode

    def run(self, x: torch.Tensor, mask: torch.Tensor | None, layouts: list[Layout]) -> torch.Tensor:
        """The layers over one sequence, layer i routing its tokens by ``layouts[i]``; then the final norm."""
        key_mask = mask if mask is not None and not bool(mask.all()) else None
        bias = additive_mask(key_mask, x.shape[1], x.shape[1], x.dtype, x.device)
        for layer, layout in zip(self.layers, layouts, strict=True):
            x = layer(x, layout, bias)
        return self.final_norm(x) if self.final_norm is not None else x

    def forward(self, x: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: ForwardContext) -> Any:
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ConfigError("encoder type 'modality_experts' needs the dual embedding (a text and an image stream)")
        masks = mask if isinstance(mask, (tuple, list)) else (mask, mask)
        mode = ctx.encoder_mode or self.default_mode
        if mode not in MODES:
            raise ConfigError(f"encoder type 'modality_experts' has modes {list(MODES)}, not {mode!r}")
        layers = self.cfg.layers_num
        if mode == "dual":
            return tuple(self.run(xi, mi, [[(name, xi.shape[1])]] * layers)
                         for xi, mi, name in zip(x, masks, self.cfg.modalities, strict=True))
        lengths = [xi.shape[1] for xi in x]
        split = [(name, n) for name, n in zip(self.cfg.modalities, lengths, strict=True)]
        fused = [(FUSION_EXPERT, sum(lengths))]
        layouts = [split if i < self.bottom else fused for i in range(layers)]
        fused_mask = None if all(m is None for m in masks) else torch.cat(
            [_key_mask(mi, xi) for xi, mi in zip(x, masks, strict=True)], dim=1)
        return self.run(torch.cat(list(x), dim=1), fused_mask, layouts)

    def output_mask(self, mask: Any, hidden: Any, ctx: ForwardContext) -> Any:
        """The real-token mask of ``hidden``: the streams' pair in ``dual`` mode, their concatenation in ``fusion``."""
        if (ctx.encoder_mode or self.default_mode) == "dual" or not isinstance(mask, (tuple, list)):
            return mask
        if all(m is None for m in mask):
            return None
        total = hidden.shape[1]
        given = [m for m in mask if m is not None]
        if len(given) == 2:
            return torch.cat([m.bool() for m in mask], dim=1)
        rest = torch.ones(given[0].shape[0], total - given[0].shape[1], dtype=torch.bool, device=given[0].device)
        return torch.cat([given[0].bool(), rest] if mask[0] is not None else [rest, given[0].bool()], dim=1)
