"""``mae``: masked image modelling on the patches where ``patch_mask`` is true.

Three modes, chosen by config:
- BEiT (``image_vocab_size > 0``): a linear head classifies each masked patch into its visual token,
  ``image_token_labels`` (B, N), -100 where not masked. Embedding ``[masked_patch, pos]``.
- SimMIM-style pixel regression (embedding ``[masked_patch, pos]``): a linear head predicts each masked
  patch's pixels from the encoder state at its place.
- MAE (embedding ``[patch, pos, drop_masked]``): the encoder saw only the visible patches; a light decoder
  (``decoder_layers_num`` pre-norm transformer layers of ``decoder_hidden_size``) receives the visible states
  back in their grid places, a learned ``mask_token`` elsewhere and learned decoder positions, and
  predicts every patch's pixels. He et al. 2022 use fixed 2-D sin-cos decoder positions; ours are learned.
Pixel targets are ``patchify(pixel_values)`` (patch rows, each p*p*C in (row, column, channel) order, as
MAE); with ``norm_pix_loss`` each patch is normalised by its own mean and variance. The loss is the mean
squared error per patch, averaged over masked patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.embeddings.base import require
from modaloom.encoders.transformer import TransformerStack
from modaloom.errors import ConfigError, DataError
from modaloom.losses.cross_entropy import CrossEntropy, CrossEntropyOptions
from modaloom.model_config import EncoderConfig, ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import IGNORE, Target, TargetOutput, classification_metrics


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p * p * C): patches in row-major order, each flattened as (row, column, channel)."""
    b, c, h, w = pixels.shape
    p = patch_size
    if h % p or w % p:
        raise DataError(f"image {h}x{w} is not divisible by patch_size {p}")
    x = pixels.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


class MAEDecoder(nn.Module):
    """Visible states + mask tokens in grid order -> per-patch predictions. Parameters: ``input_projection``,
    ``mask_token``, ``positions`` (N + cls, D), ``stack.*`` (transformer layers + final norm), ``output``."""

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int, out_size: int) -> None:
        super().__init__()
        emb = model_cfg.embedding
        self.offset = int(emb.cls_token)
        width = cfg.decoder_hidden_size
        self.input_projection = nn.Linear(hidden_size, width)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.positions = nn.Parameter(torch.randn(emb.num_patches + self.offset, width) * 0.02)
        stack_cfg = EncoderConfig(
            type="transformer", hidden_size=width, layers_num=cfg.decoder_layers_num,
            heads_num=cfg.decoder_heads_num, feedforward_size=cfg.decoder_feedforward_size,
            act=model_cfg.encoder.act, norm="layernorm", norm_eps=1e-6, norm_position="pre", final_norm=True,
            dropout=0.0,
        )
        stack_cfg.validate()
        self.stack = TransformerStack(stack_cfg, width)
        self.output = nn.Linear(width, out_size)

    def forward(self, hidden: torch.Tensor, kept: torch.Tensor, num_patches: int) -> torch.Tensor:
        h = self.input_projection(hidden)
        b, _, d = h.shape
        grid = self.mask_token.to(h.dtype).expand(b, num_patches, d)
        grid = grid.scatter(1, kept.unsqueeze(-1).expand(-1, -1, d), h[:, self.offset:])
        x = torch.cat([h[:, : self.offset], grid], dim=1) + self.positions.to(h.dtype)
        return self.output(self.stack(x, None, causal=False))[:, self.offset:]


@dataclass
class MaskedImageOptions(CrossEntropyOptions):
    """Options of ``mae``; ``label_smoothing`` applies to BEiT's visual-token classification."""

    patch_size: int = 16  # pixels per patch side of the regression targets (as the embedding's)
    channels: int = 3  # colour channels of the regression targets
    norm_pix_loss: bool = False  # regress each patch's pixels normalised by their own mean and variance (MAE)
    image_vocab_size: int = 0  # >0: BEiT-style discrete visual tokens instead of pixel regression
    # MAE's light decoder over visible + mask tokens (used when the embedding drops masked patches)
    decoder_layers_num: int = 0
    decoder_hidden_size: int = 512  # width of the light decoder
    decoder_heads_num: int = 16  # attention heads of the light decoder
    decoder_feedforward_size: int = 2048  # feed-forward width of the light decoder


@register("target", "mae")
class MaskedImageModel(Target):
    """Parameters: ``output`` (linear head: hidden -> p*p*C pixels or image_vocab_size tokens) or, in MAE
    mode, ``decoder.*``."""

    Options = MaskedImageOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        emb = model_cfg.embedding
        if cfg.patch_size != emb.patch_size or cfg.channels != emb.channels:
            raise ConfigError(
                f"mae target patch_size/channels {cfg.patch_size}/{cfg.channels} differ from the embedding's "
                f"{emb.patch_size}/{emb.channels}; they must describe the same patches"
            )
        self.offset = int(emb.cls_token)
        self.num_patches = emb.num_patches
        self.tokens = cfg.image_vocab_size > 0
        self.drops = "drop_masked" in emb.parts
        out_size = cfg.image_vocab_size if self.tokens else cfg.patch_size ** 2 * cfg.channels
        if self.drops:
            if self.tokens or cfg.decoder_layers_num <= 0:
                raise ConfigError(
                    "with drop_masked the encoder never sees the masked patches: the mae target needs "
                    f"decoder_layers_num > 0 (got {cfg.decoder_layers_num}) and pixel targets (image_vocab_size 0)"
                )
            self.decoder = MAEDecoder(cfg, model_cfg, hidden_size, out_size)
            self.output = None
        else:
            self.decoder = None
            self.output = nn.Linear(hidden_size, out_size)
        self.token_loss_fn = CrossEntropy(cfg)

    def predict(self, hidden: torch.Tensor, ctx) -> torch.Tensor:
        """(B, N, out) predictions for every patch."""
        if self.decoder is not None:
            kept = ctx.kept_patch_index
            if kept is None:
                raise ConfigError("mae target in MAE mode needs ctx.kept_patch_index from the drop_masked part")
            return self.decoder(hidden, kept, self.num_patches)
        return self.output(hidden[:, self.offset:])

    def forward(self, hidden, mask, batch, ctx) -> TargetOutput:
        if self.tokens:
            return self.token_loss(hidden, batch)
        prediction = self.predict(hidden, ctx)
        if "patch_mask" not in batch:
            return TargetOutput(logits=prediction)
        masked = require(batch, "patch_mask", "mae target").bool()
        target = patchify(require(batch, "pixel_values", "mae target"), self.cfg.patch_size).float()
        if self.cfg.norm_pix_loss:
            target = normalise_patches(target)
        per_patch = ((prediction[masked].float() - target[masked]) ** 2).mean(-1)
        count = masked.sum()
        loss = per_patch.sum() / count.clamp(min=1)
        return TargetOutput(loss, {f"{self.cfg.label}_loss": loss.detach(), f"{self.cfg.label}_count": count},
                            prediction)

    def token_loss(self, hidden, batch) -> TargetOutput:
        states = hidden[:, self.offset:]
        labels = batch.get("image_token_labels")
        if labels is None:
            return TargetOutput(logits=self.output(states))
        selected = labels != IGNORE
        logits = self.output(states[selected])
        loss, metrics = classification_metrics(self.cfg.label, logits, labels[selected], self.token_loss_fn)
        return TargetOutput(loss, metrics, logits)
