"""Transformer encoder stack (BERT, GPT-2, T5 encoder, LLaMA, ViT ...); ALBERT-style layer sharing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.config_schema import choice
from modaloom.context import ForwardContext
from modaloom.encoders.base import Encoder
from modaloom.errors import ConfigError
from modaloom.layers.attention import KVCache
from modaloom.layers.masks import additive_mask
from modaloom.layers.norms import make_norm
from modaloom.layers.positions import RelativePositionBias, Rotary, alibi_bias, alibi_slopes
from modaloom.layers.transformer_layer import TransformerLayer
from modaloom.model_config import ACTIVATIONS, NORMS, EncoderConfig
from modaloom.registry import register


@dataclass
class TransformerOptions:
    """Options of the transformer encoder and decoder (and of any stack built on TransformerStack)."""

    heads_num: int = 12  # attention heads
    head_size: int = 0  # 0: hidden_size // heads_num
    kv_heads_num: int = 0  # 0: same as heads_num; fewer gives grouped-query attention
    feedforward_size: int = 3072  # inner width of the feed-forward block
    act: str = choice("gelu", *ACTIVATIONS)  # feed-forward activation
    # dense: act(xW1)W2; gated: (act(xW1) * xW3)W2 (GEGLU / SwiGLU)
    feed_forward: str = choice("dense", "dense", "gated")
    norm: str = choice("layernorm", *NORMS)  # norm of each sublayer (t5 and rms: RMSNorm without bias)
    norm_eps: float = 1e-12  # epsilon of the norms
    # post: norm after each residual sum (BERT); pre: before each sublayer (GPT-2)
    norm_position: str = choice("post", "post", "pre")
    final_norm: bool | None = None  # default: true for pre-norm stacks
    # which positions attend to which: all, earlier ones, or a visible prefix (prefix_lengths)
    mask: str = choice("fully_visible", "fully_visible", "causal", "prefix")
    # position scheme inside attention (none: the embedding's positions only)
    position: str = choice("none", "none", "rotary", "relative", "alibi")
    rotary_base: float = 10000.0  # rotary: base of the frequencies
    rotary_dim: int = 0  # 0: the full head size
    relative_buckets: int = 32  # relative: buckets of the T5 position bias
    relative_max_distance: int = 128  # relative: distance from which buckets are shared
    bias: bool = True  # biases in the attention and feed-forward linears
    attention_scale: bool = True  # false for T5 (no 1/sqrt(d) scaling)
    attention_dropout: float | None = None  # default: dropout
    share_layers: bool = False  # ALBERT: one layer applied layers_num times
    input_projection: bool | None = None  # linear from embedding to hidden size; default: when sizes differ

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // max(self.heads_num, 1)  # type: ignore[attr-defined]

    @property
    def use_final_norm(self) -> bool:
        return self.norm_position == "pre" if self.final_norm is None else self.final_norm

    def check(self) -> None:
        if self.heads_num <= 0:
            raise ConfigError(f"heads_num must be positive, got {self.heads_num}")
        hidden = self.hidden_size  # type: ignore[attr-defined]
        if not self.head_size and hidden % self.heads_num:
            raise ConfigError(
                f"hidden_size {hidden} is not divisible by heads_num {self.heads_num}; "
                f"change one of them or set head_size"
            )
        kv = self.kv_heads_num or self.heads_num
        if self.heads_num % kv:
            raise ConfigError(f"heads_num {self.heads_num} is not a multiple of kv_heads_num {kv}")


class TransformerStack(nn.Module):
    """Layers + attention-level positions + final norm; shared by the encoder and the decoder."""

    def __init__(self, cfg: EncoderConfig, input_size: int, cross_attention: bool = False,
                 memory_size: int | None = None, bidirectional_bias: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        project = input_size != cfg.hidden_size if cfg.input_projection is None else cfg.input_projection
        if input_size != cfg.hidden_size and not project:
            raise ConfigError(
                f"encoder.input_projection is false but the embedding size {input_size} differs from "
                f"hidden_size {cfg.hidden_size}"
            )
        self.input_projection = nn.Linear(input_size, cfg.hidden_size) if project else None
        count = 1 if cfg.share_layers else cfg.layers_num
        self.layers = nn.ModuleList(
            TransformerLayer(cfg, cross_attention=cross_attention, memory_size=memory_size) for _ in range(count)
        )
        self.final_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias) if cfg.use_final_norm else None
        self.rotary = Rotary(cfg.rotary_dim or cfg.head_dim, cfg.rotary_base) if cfg.position == "rotary" else None
        self.relative_bias = (
            RelativePositionBias(cfg.heads_num, cfg.relative_buckets, cfg.relative_max_distance, bidirectional_bias)
            if cfg.position == "relative" else None
        )
        if cfg.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(cfg.heads_num), persistent=False)
        else:
            self.alibi = None
        self.gradient_checkpointing = False

    def layer_list(self) -> list[TransformerLayer]:
        return [self.layers[0]] * self.cfg.layers_num if self.cfg.share_layers else list(self.layers)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        prefix_lengths: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        cross_caches: list[KVCache] | None = None,
        past_length: int = 0,
    ) -> torch.Tensor:
        if self.input_projection is not None:
            x = self.input_projection(x)
        q_len = x.shape[1]
        k_len = past_length + q_len
        if mask is not None and mask.shape[1] != k_len:
            raise ValueError(f"mask covers {mask.shape[1]} positions, expected {k_len}")
        position_bias = None
        if self.relative_bias is not None:
            position_bias = self.relative_bias(q_len, k_len, x.device, offset=past_length)
        elif self.alibi is not None:
            position_bias = alibi_bias(self.alibi, q_len, k_len, x.device, offset=past_length, causal=causal)
        key_mask = mask if mask is not None and not bool(mask.all()) else None
        use_causal_flag = causal and key_mask is None and position_bias is None and prefix_lengths is None \
            and past_length == 0
        self_bias = None if use_causal_flag else additive_mask(
            key_mask, q_len, k_len, x.dtype, x.device, causal=causal, prefix_lengths=prefix_lengths,
            offset=past_length, bias=position_bias,
        )
        rotary = self.rotary(q_len, past_length, x.device, x.dtype) if self.rotary is not None else None
        memory_bias = None
        if memory is not None and memory_mask is not None and not bool(memory_mask.all()):
            memory_bias = additive_mask(memory_mask, q_len, memory.shape[1], x.dtype, x.device)
        for i, layer in enumerate(self.layer_list()):
            cache = caches[i] if caches is not None else None
            cross_cache = cross_caches[i] if cross_caches is not None else None
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, self_bias, use_causal_flag, rotary, memory, memory_bias, cache, cross_cache,
                    use_reentrant=False,
                )
            else:
                x = layer(x, self_bias, use_causal_flag, rotary, memory, memory_bias, cache, cross_cache)
        return self.final_norm(x) if self.final_norm is not None else x


@register("encoder", "transformer")
class TransformerEncoder(Encoder):
    """Fully-visible, causal or prefix-masked transformer over one embedded sequence."""

    Options = TransformerOptions

    def __init__(self, cfg: EncoderConfig, input_size: int) -> None:
        super().__init__(cfg, input_size)
        self.stack = TransformerStack(cfg, input_size, bidirectional_bias=cfg.mask == "fully_visible")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: dict[str, torch.Tensor],
                ctx: ForwardContext) -> torch.Tensor:
        caches = ctx.encoder_caches
        past = caches[0].length if caches else 0
        prefix = batch.get("prefix_lengths") if self.cfg.mask == "prefix" else None
        return self.stack(x, mask, causal=self.cfg.mask != "fully_visible", prefix_lengths=prefix,
                          caches=caches, past_length=past)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in range(self.cfg.layers_num)]
