"""The typed context that travels beside the batch through one forward pass, from part to part.

The batch holds data; the context holds what parts tell each other about this call: which batch keys the
current stream reads, positions already in a key/value cache, caches per layer, segment ids a part made
(ViLT's text/image split), the kept-patch index of MAE, per-stream contexts of a dual model, features and
similarities a target computes for other targets or for the caller, and modality ids for mixture-of-experts layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from modaloom.layers.attention import KVCache


@dataclass
class ForwardContext:
    """What parts share during one forward pass. Fields left at their defaults mean "not in use"."""

    # the sequence the current (stream's) embedding reads; None: the part's default key
    input_key: str | None = None  # input_ids / pixel_values / input_features
    mask_key: str | None = None  # attention_mask / feature_mask
    past_length: int = 0  # positions already held by the encoder's key/value cache (cached generation)
    # (B, L) absolute position of each input token, for rows whose positions do not start at past_length:
    # left-padded prompts in batched generation (mask.cumsum - 1, as transformers). Read by the pos and
    # sinusoidal parts; None: positions are past_length, past_length + 1, ... for every row
    position_ids: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None  # (B, L) written by word_patch for the seg part
    modality_ids: torch.Tensor | None = None  # (B, L) per-token modality, for modality-expert layers
    # the view a multi-mode encoder computes (modality_experts: dual / fusion); Model.forward sets each target's
    # ``encoder_mode`` before calling it; None: the encoder's default
    encoder_mode: str | None = None
    kept_patch_index: torch.Tensor | None = None  # (B, V) written by drop_masked for the mae target
    # key/value caches, one per layer: encoder self-attention, decoder self- and cross-attention
    encoder_caches: list[KVCache] | None = None
    decoder_caches: list[KVCache] | None = None
    cross_caches: list[KVCache] | None = None
    decoder_past_length: int = 0  # positions already held by the decoder's self-attention cache
    streams: list[ForwardContext] = field(default_factory=list)  # one per stream of a dual model
    # features a target computes for other targets or the caller, by target name (e.g. clr's pair)
    features: dict[str, Any] = field(default_factory=dict)
    # (B, B) similarity logits a contrastive target computed in this pass, by target name: [i, j] = stream 0 of
    # row i against stream 1 of row j (``clr``: scale x cosine of its pooled features), detached. The ``itm``
    # target mines its hard negatives from them (ALBEF) when it runs after that target in the same pass
    similarities: dict[str, torch.Tensor] = field(default_factory=dict)
    # the model's embedding + encoder, (batch) -> (hidden, mask), set by Model.forward: targets that
    # encode other inputs in the same step call it (hard-negative itm re-encodes mismatched pairs)
    encode: Callable[[dict[str, torch.Tensor]], tuple[Any, Any]] | None = None
    # the optimizer step (0-based) this pass trains for, read by the targets' weight schedules; None: the
    # model's own (``Model.set_step``, called by the Trainer's hook before each step), else the schedules' end
    step: int | None = None

    def for_stream(self, input_key: str = "", mask_key: str = "") -> ForwardContext:
        """A context for one stream of a dual model: caches and shared features kept, sequence fields reset."""
        return replace(self, input_key=input_key or None, mask_key=mask_key or None, past_length=0,
                       position_ids=None, segment_ids=None, modality_ids=None, kept_patch_index=None, streams=[])

    def for_decoder(self) -> ForwardContext:
        """A context for the target embedding: it reads decoder_input_ids at the decoder's cache position."""
        return replace(self, input_key="decoder_input_ids", mask_key="decoder_attention_mask",
                       past_length=self.decoder_past_length, position_ids=None, segment_ids=None, modality_ids=None, streams=[])

    def key(self, default: str) -> str:
        return self.input_key or default

    def mask(self, default: str) -> str:
        return self.mask_key or default
