"""The model section of a config: embedding, encoder, target embedding, decoder and targets.

Each section names registered parts and carries their hyper-parameters. Sizes a later part can derive
from an earlier one (a target's hidden size and vocabulary) are filled in by ``ModelConfig.resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modaloom.config_schema import choice
from modaloom.errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_fast", "gelu_new", "quick_gelu", "relu", "silu", "swish", "tanh")
NORMS = ("layernorm", "rms", "t5", "none")


@dataclass
class EmbeddingConfig:
    """A named sum of embedding parts, then an optional norm and dropout (or two streams for ``dual``)."""

    parts: list[str] = field(default_factory=lambda: ["word", "pos"])
    vocab_size: int = 0
    emb_size: int = 768
    max_seq_length: int = 512
    position_offset: int = 0  # learned positions start at this row (2 for RoBERTa/BART)
    type_vocab_size: int = 2
    pad_id: int = 0
    scale_embedding: bool = False  # multiply token embeddings by sqrt(emb_size) (BART, S2T)
    norm: str = choice("layernorm", *NORMS)
    norm_eps: float = 1e-12
    dropout: float = 0.1
    # images
    image_height: int = 224
    image_width: int = 224
    channels: int = 3
    patch_size: int = 16
    cls_token: bool = True
    patch_bias: bool = True
    # audio (filterbank frames -> strided 1-D convolutions)
    audio_feature_size: int = 80
    conv_channels: list[int] = field(default_factory=lambda: [1024])
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    # dual: one embedding config per stream
    streams: list[EmbeddingConfig] = field(default_factory=list)
    # batch keys a stream reads instead of the defaults (e.g. input_ids_b for the second tower of a
    # siamese text model); "" keeps the part's default (input_ids / pixel_values / input_features)
    input_key: str = ""
    mask_key: str = ""

    @property
    def num_patches(self) -> int:
        return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)

    def validate(self) -> None:
        if not self.parts:
            raise ConfigError("embedding.parts is empty; name at least one part, e.g. [word, pos]")
        if "dual" in self.parts and len(self.streams) != 2:
            raise ConfigError(f"a dual embedding needs exactly 2 streams, got {len(self.streams)}")
        if any(p in self.parts for p in ("patch", "word_patch", "masked_patch")):
            if self.image_height % self.patch_size or self.image_width % self.patch_size:
                raise ConfigError(
                    f"image size {self.image_height}x{self.image_width} is not divisible by "
                    f"patch_size {self.patch_size}"
                )
        if len(self.conv_kernel_sizes) < 1:
            raise ConfigError("conv_kernel_sizes needs at least one kernel size")


@dataclass
class EncoderConfig:
    """A stack mapping embeddings to hidden states; also used for the decoder (``type: transformer``)."""

    type: str = "transformer"
    hidden_size: int = 768
    layers_num: int = 12
    heads_num: int = 12
    head_size: int = 0  # 0: hidden_size // heads_num
    kv_heads_num: int = 0  # 0: same as heads_num; fewer gives grouped-query attention
    feedforward_size: int = 3072
    act: str = choice("gelu", *ACTIVATIONS)
    feed_forward: str = choice("dense", "dense", "gated")
    norm: str = choice("layernorm", *NORMS)
    norm_eps: float = 1e-12
    norm_position: str = choice("post", "post", "pre")
    final_norm: bool | None = None  # default: true for pre-norm stacks
    mask: str = choice("fully_visible", "fully_visible", "causal", "prefix")
    position: str = choice("none", "none", "rotary", "relative", "alibi")
    rotary_base: float = 10000.0
    rotary_dim: int = 0  # 0: the full head size
    relative_buckets: int = 32
    relative_max_distance: int = 128
    bias: bool = True
    attention_scale: bool = True  # false for T5 (no 1/sqrt(d) scaling)
    dropout: float = 0.1
    attention_dropout: float | None = None  # default: dropout
    share_layers: bool = False  # ALBERT: one layer applied layers_num times
    input_projection: bool | None = None  # linear from embedding to hidden size; default: when sizes differ
    # RNN and gated CNN encoders
    kernel_size: int = 4
    block_size: int = 2
    # dual: one encoder config per stream
    streams: list[EncoderConfig] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // max(self.heads_num, 1)

    @property
    def use_final_norm(self) -> bool:
        return self.norm_position == "pre" if self.final_norm is None else self.final_norm

    def validate(self) -> None:
        if self.type == "dual":
            if len(self.streams) != 2:
                raise ConfigError(f"a dual encoder needs exactly 2 streams, got {len(self.streams)}")
            return
        if self.type in ("transformer",):
            if self.heads_num <= 0:
                raise ConfigError(f"heads_num must be positive, got {self.heads_num}")
            if not self.head_size and self.hidden_size % self.heads_num:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by heads_num {self.heads_num}; "
                    f"change one of them or set head_size"
                )
            kv = self.kv_heads_num or self.heads_num
            if self.heads_num % kv:
                raise ConfigError(f"heads_num {self.heads_num} is not a multiple of kv_heads_num {kv}")
        if self.layers_num <= 0:
            raise ConfigError(f"layers_num must be positive, got {self.layers_num}")


@dataclass
class TargetConfig:
    """One objective with its head. Sizes left at 0 are derived from the embedding and encoder."""

    type: str = "mlm"
    weight: float = 1.0
    name: str = ""  # metric prefix; default: the type
    hidden_size: int = 0
    vocab_size: int = 0
    act: str = choice("gelu", *ACTIVATIONS)
    norm: str = choice("layernorm", *NORMS)
    norm_eps: float = 1e-12
    transform: bool = True  # MLM: dense + act + norm before the output layer (BERT); false for none
    tie_weights: bool = False  # output layer shares the word embedding's weight
    output_bias: bool = True
    scale_before_output: bool = False  # multiply by hidden_size**-0.5 before the output layer (tied T5)
    source: str = choice("auto", "auto", "encoder", "decoder")  # which states the target reads
    labels_num: int = 2
    pooling: str = choice("first", "first", "last", "mean", "max", "eos", "none")
    pooler: bool = True  # dense + tanh on the pooled vector (BERT NSP / classification)
    label_smoothing: float = 0.0
    # contrastive (clr)
    feature_size: int = 512
    projection: bool = True
    projection_bias: bool = False
    logit_scale_init: float = 2.6592  # log(1 / 0.07), as CLIP
    learnable_scale: bool = True
    gather: bool = True  # gather features across ranks when distributed
    poolings: list[str] = field(default_factory=lambda: ["first", "first"])  # per stream
    eos_id: int | None = None  # 'eos' pooling: first position of this id; None: the largest id (CLIP legacy)
    # masked patches (mae)
    patch_size: int = 16
    channels: int = 3
    norm_pix_loss: bool = False
    image_vocab_size: int = 0  # >0: BEiT-style discrete visual tokens instead of pixel regression
    # MAE's light decoder over visible + mask tokens (used when the embedding drops masked patches)
    decoder_layers_num: int = 0
    decoder_hidden_size: int = 512
    decoder_heads_num: int = 16
    decoder_feedforward_size: int = 2048

    @property
    def label(self) -> str:
        return self.name or self.type

    def validate(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"target weight must be >= 0, got {self.weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class ModelConfig:
    """The five parts. ``tgt_embedding`` and ``decoder`` are present for encoder-decoder models only."""

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tgt_embedding: EmbeddingConfig | None = None
    decoder: EncoderConfig | None = None
    targets: list[TargetConfig] = field(default_factory=lambda: [TargetConfig()])
    share_embedding: bool = False  # target embedding shares the source word embedding (T5, BART)
    init_std: float = 0.02
    paper: str = ""  # the publication a zoo config reproduces

    def validate(self) -> None:
        if (self.tgt_embedding is None) != (self.decoder is None):
            raise ConfigError("tgt_embedding and decoder go together: give both or neither")
        if not self.targets:
            raise ConfigError("a model needs at least one target")
        if self.decoder is not None and self.decoder.type != "transformer":
            raise ConfigError(f"decoder type {self.decoder.type!r} is unknown; valid choices: transformer")
        seen = set()
        for t in self.targets:
            if t.label in seen:
                raise ConfigError(f"two targets are named {t.label!r}; give one a distinct 'name'")
            seen.add(t.label)
        if self.share_embedding and self.tgt_embedding is not None:
            if self.tgt_embedding.vocab_size not in (0, self.embedding.vocab_size):
                raise ConfigError(
                    f"share_embedding needs equal vocabularies, got {self.embedding.vocab_size} and "
                    f"{self.tgt_embedding.vocab_size}"
                )
