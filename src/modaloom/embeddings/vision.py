"""Image embedding parts: conv patches (ViT, CLIP), masked patches (BEiT, SimMIM), dropping masked patches
(MAE) and text + patches in one stream (ViLT).

Patches come from ``pixel_values`` (B, C, H, W) through a Conv2d whose kernel and stride are the patch size,
flattened row by row to (B, N, E); a learned class token is prepended when ``cls_token`` is set. Positions
are not added here: the ``pos`` part that follows adds learned rows 0..N (so ``max_seq_length >= N + 1``).
MAE's "drop the masked patches" is its own part, ``drop_masked``, placed after ``pos`` so that every kept
patch keeps the position of its place in the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.batch import Batch
from modaloom.context import ForwardContext
from modaloom.embeddings.base import EmbeddingPart, require
from modaloom.embeddings.text import WordOptions
from modaloom.errors import ConfigError, DataError
from modaloom.model_config import EmbeddingConfig
from modaloom.registry import register

POSITION_PARTS = ("pos",)


@dataclass
class ImageOptions:
    """Options of the image parts (patch, masked_patch, word_patch)."""

    image_height: int = 224  # height of the input images in pixels
    image_width: int = 224  # width of the input images in pixels
    channels: int = 3  # colour channels of the input images
    patch_size: int = 16  # side of the square patches in pixels (image sides must be multiples)
    cls_token: bool = True  # prepend a learned class token to the patches
    patch_bias: bool = True  # bias in the patch projection (conv)

    @property
    def num_patches(self) -> int:
        return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)

    def check(self) -> None:
        if self.image_height % self.patch_size or self.image_width % self.patch_size:
            raise ConfigError(
                f"image size {self.image_height}x{self.image_width} is not divisible by patch_size {self.patch_size}"
            )


@dataclass
class WordPatchOptions(ImageOptions, WordOptions):
    """ViLT's single stream embeds text and image: the options of both."""


def sequence_length(cfg: EmbeddingConfig) -> int:
    """Tokens an image becomes: its patches, plus the class token when there is one."""
    return cfg.num_patches + int(cfg.cls_token)


def make_projection(cfg: EmbeddingConfig) -> nn.Conv2d:
    """The patch projection: a Conv2d whose kernel and stride are the patch size."""
    return nn.Conv2d(cfg.channels, cfg.emb_size, cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)


def project_patches(projection: nn.Conv2d, pixels: torch.Tensor, cfg: EmbeddingConfig, part: str) -> torch.Tensor:
    """pixel_values (B, C, H, W) -> patch vectors (B, N, E), patches in row-major order."""
    expected = (cfg.channels, cfg.image_height, cfg.image_width)
    if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
        raise DataError(
            f"embedding part {part!r} expects pixel_values of shape (B, {', '.join(map(str, expected))}) "
            f"(channels, image_height, image_width), got {tuple(pixels.shape)}"
        )
    return projection(pixels.to(projection.weight.dtype)).flatten(2).transpose(1, 2)


def _check_position_room(cfg: EmbeddingConfig, part: str, tokens: int) -> None:
    if any(p in cfg.parts for p in POSITION_PARTS) and cfg.max_seq_length < tokens:
        raise ConfigError(
            f"embedding part {part!r} makes {tokens} tokens per example ({cfg.num_patches} patches of "
            f"{cfg.patch_size}x{cfg.patch_size} in {cfg.image_height}x{cfg.image_width}"
            f"{' + class token' if cfg.cls_token else ''}{' + text' if part == 'word_patch' else ''}) but "
            f"embedding.max_seq_length is {cfg.max_seq_length}; raise it to at least {tokens}"
        )


def _patch_mask(batch: Batch, part: str, shape: tuple[int, int]) -> torch.Tensor:
    mask = require(batch, "patch_mask", part)
    if tuple(mask.shape) != shape:
        raise DataError(f"patch_mask has shape {tuple(mask.shape)}, expected (batch, patches) = {shape}")
    return mask.bool()


class ImagePatches(EmbeddingPart):
    """Shared by the image parts: ``projection`` (Conv2d) and the optional ``cls_token`` (E,)."""

    Options = ImageOptions
    creates_sequence = True
    part_name = "patch"

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        self.projection = make_projection(cfg)
        self.cls_token = nn.Parameter(torch.randn(cfg.emb_size) * 0.02) if cfg.cls_token else None

    def patches(self, batch: Batch) -> torch.Tensor:
        pixels = require(batch, "pixel_values", self.part_name)
        return project_patches(self.projection, pixels, self.cfg, self.part_name)

    def with_class_token(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_token is None:
            return x
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1)


@register("embedding", "patch")
class PatchEmbedding(ImagePatches):
    """ViT / CLIP image tokens: [class token; conv patches]; the mask is None (every token is real)."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        _check_position_room(cfg, "patch", sequence_length(cfg))

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        return self.with_class_token(self.patches(batch)), None


@register("embedding", "masked_patch")
class MaskedPatchEmbedding(ImagePatches):
    """BEiT / SimMIM: patches where ``patch_mask`` (B, N) is true are replaced by a learned ``mask_token``
    before the class token is prepended; the sequence keeps its full length."""

    part_name = "masked_patch"

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        if "drop_masked" in cfg.parts:
            raise ConfigError(
                "embedding.parts has both masked_patch (replaces masked patches by a mask token) and "
                "drop_masked (removes them); MAE uses [patch, pos, drop_masked], BEiT [masked_patch, pos]"
            )
        _check_position_room(cfg, "masked_patch", sequence_length(cfg))
        self.mask_token = nn.Parameter(torch.randn(cfg.emb_size) * 0.02)

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        patches = self.patches(batch)
        if "patch_mask" in batch:
            masked = _patch_mask(batch, self.part_name, tuple(patches.shape[:2]))
            patches = torch.where(masked.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        return self.with_class_token(patches), None


def kept_patch_index(patch_mask: torch.Tensor) -> torch.Tensor:
    """(B, V) indices of the visible patches of each row, in grid order; every row must keep V patches."""
    visible = (~patch_mask).sum(1)
    if bool((visible != visible[0]).any()):
        raise DataError(
            f"drop_masked needs the same number of masked patches in every row, got visible counts "
            f"{visible.tolist()}"
        )
    order = torch.argsort(patch_mask.to(torch.int8), dim=1, stable=True)
    return order[:, : int(visible[0])]


@register("embedding", "drop_masked")
class DropMaskedPatches(EmbeddingPart):
    """MAE: removes the patches where ``patch_mask`` is true, after ``pos`` has given every patch its place.

    Keeps the class token (when ``cls_token``) and the visible patches in grid order, and writes their
    patch indices (B, V) to ``ctx.kept_patch_index`` for the ``mae`` target's decoder.
    """

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        if cfg.parts[-1] != "drop_masked" or cfg.parts[0] not in ("patch",):
            raise ConfigError(
                f"drop_masked must come last, after an image part and its positions, e.g. [patch, pos, "
                f"drop_masked]; got {cfg.parts}"
            )
        self.offset = int(cfg.cls_token)

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        patches = x[:, self.offset:]
        masked = _patch_mask(batch, "drop_masked", tuple(patches.shape[:2]))
        index = kept_patch_index(masked)
        ctx.kept_patch_index = index
        kept = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([x[:, : self.offset], kept], dim=1), None


@register("embedding", "word_patch")
class WordPatchEmbedding(ImagePatches):
    """ViLT single stream: [text tokens; class token + image patches].

    Text comes from ``input_ids`` (table ``weight``, tieable) and is padded to a fixed length,
    ``max_seq_length - patches - 1``, so that the ``pos`` part that follows gives text rows 0..T-1 and every
    image token the same rows whatever the text length. The mask covers both (``attention_mask`` for the text,
    ones for the image) and ``ctx.segment_ids`` marks text 0 and image 1 for the ``seg`` part.
    """

    Options = WordPatchOptions
    part_name = "word_patch"

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        if cfg.vocab_size <= 0:
            raise ConfigError("embedding.vocab_size must be set (> 0) for the 'word_patch' part")
        self.text_length = cfg.max_seq_length - sequence_length(cfg)
        if self.text_length < 1:
            raise ConfigError(
                f"word_patch: embedding.max_seq_length {cfg.max_seq_length} leaves no room for text after "
                f"{sequence_length(cfg)} image tokens; set it to image tokens + text length"
            )
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_size))

    def word_embedding(self) -> nn.Module:
        return self

    def text(self, batch: Batch, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        ids = require(batch, ctx.key("input_ids"), self.part_name)
        if ids.shape[1] > self.text_length:
            raise DataError(
                f"word_patch: {ids.shape[1]} text tokens exceed the {self.text_length} that "
                f"embedding.max_seq_length {self.cfg.max_seq_length} leaves beside {sequence_length(self.cfg)} "
                f"image tokens"
            )
        key_mask = batch.get(ctx.mask("attention_mask"))
        real = key_mask.bool() if key_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        pad = self.text_length - ids.shape[1]
        if pad:
            ids = nn.functional.pad(ids, (0, pad), value=self.cfg.pad_id)
            real = nn.functional.pad(real, (0, pad), value=False)
        return nn.functional.embedding(ids, self.weight), real

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        words, text_mask = self.text(batch, ctx)
        image = self.with_class_token(self.patches(batch)).to(words.dtype)
        image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
        segments = torch.cat([torch.zeros_like(text_mask, dtype=torch.long),
                              torch.ones_like(image_mask, dtype=torch.long)], dim=1)
        ctx.segment_ids = segments
        return torch.cat([words, image], dim=1), torch.cat([text_mask, image_mask], dim=1)
