"""ViT (``model_type: vit``): class token + conv patches + learned positions, pre-norm encoder, final norm.

Keys follow the names ``transformers`` 5 uses in memory and accepts on load (``vit.layers.{i}.attention.q_proj``);
checkpoints in the older on-disk layout (``vit.encoder.layer.{i}.attention.attention.query``, what the Hub
and ``save_pretrained`` hold) are read through import-only aliases. The class token (1, 1, D) and the
positions (1, N + 1, D) are reshaped to our (D,) and (N + 1, D).

The names of our patch embedding part are collected in ``PATCH`` so that they are changed in one place.
"""

from __future__ import annotations

from typing import Any

from modaloom.errors import ConfigError
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    attention_dropout,
    build_config,
    first_target,
    hf_activation,
    register_family,
)
from modaloom.interop.hf.mapping import RESHAPE, Mapping, Rule, renames, wb
from modaloom.model_config import ModelConfig

# Our patch embedding part (see docs/parts.md): class token, conv projection, learned positions.
PATCH = {
    "cls_token": "embedding.parts.patch.cls_token",
    "projection": "embedding.parts.patch.projection",
    "positions": "embedding.parts.pos.weight",
}

VIT_LAYER = [  # under vit.layers.{i}. -> encoder.stack.layers.{i}.
    *wb("attention.q_proj", "self_attn.query"),
    *wb("attention.k_proj", "self_attn.key"),
    *wb("attention.v_proj", "self_attn.value"),
    *wb("attention.o_proj", "self_attn.output"),
    *wb("layernorm_before", "self_attn_norm"),
    *wb("mlp.fc1", "feed_forward.linear_in"),
    *wb("mlp.fc2", "feed_forward.linear_out"),
    *wb("layernorm_after", "feed_forward_norm"),
]
# The on-disk layout of the same layer (old name -> the name above), accepted on import.
LEGACY_LAYER = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}


def legacy_aliases(prefix: str) -> dict[str, str]:
    out = {}
    for old, new in LEGACY_LAYER.items():
        for suffix in ("weight", "bias"):
            out[f"{prefix}encoder.layer.{{i}}.{old}.{suffix}"] = f"{prefix}layers.{{i}}.{new}.{suffix}"
    return out


class ViTFamily(HFFamily):
    model_types = ("vit",)
    architectures = {
        "ViTForImageClassification": "encoder with a linear classifier on the class token",
        "ViTModel": "encoder with the tanh pooler",
    }
    base_architecture = "ViTModel"
    # ViT drops embeddings with hidden_dropout_prob; there is no option of its own.
    export_ignore = ("embedding.dropout",)

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        self.check_architecture(architecture)
        c = hf_config
        if not getattr(c, "qkv_bias", True):
            raise ConfigError("HF option qkv_bias=False is not supported (modaloom attention has one bias flag)")
        size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
        width = c.image_size if isinstance(c.image_size, int) else c.image_size[1]
        patch = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
        num_patches = (size // patch) * (width // patch)
        embedding = dict(parts=["patch", "pos"], emb_size=c.hidden_size, image_height=size, image_width=width,
                         patch_size=patch, channels=c.num_channels, cls_token=True, patch_bias=True,
                         max_seq_length=num_patches + 1, norm="none", dropout=c.hidden_dropout_prob)
        encoder = dict(type="transformer", hidden_size=c.hidden_size, layers_num=c.num_hidden_layers,
                       heads_num=c.num_attention_heads, feedforward_size=c.intermediate_size,
                       act=activation_from_hf(c.hidden_act, "hidden_act"), norm="layernorm",
                       norm_eps=c.layer_norm_eps, norm_position="pre", final_norm=True,
                       dropout=c.hidden_dropout_prob, attention_dropout=c.attention_probs_dropout_prob)
        pooler = architecture == "ViTModel"
        target = dict(type="cls", labels_num=c.num_labels, pooling="first", pooler=pooler)
        data = dict(embedding=embedding, encoder=encoder, targets=[target], init_std=c.initializer_range)
        return build_config(data, architecture)

    def architecture_for(self, cfg: ModelConfig) -> str:
        cls = first_target(cfg, "cls")
        return "ViTModel" if cls is None or cls.pooler else "ViTForImageClassification"

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import ViTConfig

        emb, enc = cfg.embedding, cfg.encoder
        cls = first_target(cfg, "cls")
        return ViTConfig(
            hidden_size=enc.hidden_size, num_hidden_layers=enc.layers_num, num_attention_heads=enc.heads_num,
            intermediate_size=enc.feedforward_size, hidden_act=hf_activation(enc.act),
            hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=attention_dropout(enc),
            layer_norm_eps=enc.norm_eps, image_size=emb.image_height, patch_size=emb.patch_size,
            num_channels=emb.channels, qkv_bias=True, initializer_range=cfg.init_std,
            num_labels=cls.labels_num if cls is not None else 2,
        )

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        p = "vit."
        rules = [
            Rule(p + "embeddings.cls_token", PATCH["cls_token"], RESHAPE),
            Rule(p + "embeddings.position_embeddings", PATCH["positions"], RESHAPE),
            *renames(wb("embeddings.patch_embeddings.projection", PATCH["projection"]), p),
            *renames(VIT_LAYER, p + "layers.{i}.", "encoder.stack.layers.{i}."),
            *renames(wb("layernorm", "encoder.stack.final_norm"), p),
        ]
        cls = first_target(cfg, "cls")
        if cls is not None:
            # Both optional: ViTModel has the pooler but no classifier, the classification model the reverse.
            if cls.pooler:
                rules += renames(wb("pooler.dense", f"targets.{cls.label}.pooler"), p, optional=True)
            rules += renames(wb("classifier", f"targets.{cls.label}.output"), optional=True)
        return Mapping(rules, counts={"i": cfg.encoder.layers_num}, hf_aliases=legacy_aliases(p))


register_family(ViTFamily())
