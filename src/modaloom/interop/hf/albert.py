"""ALBERT: factorized embeddings (emb -> hidden through ``encoder.stack.input_projection``), one layer
shared by the whole stack, an MLM head that maps hidden -> emb before the tied decoder, and SOP.

Only the published layout is supported: ``num_hidden_groups = inner_group_num = 1``, tied MLM decoder,
and ``embedding_size != hidden_size`` (our stack has an input projection only when the sizes differ).
"""

from __future__ import annotations

from typing import Any

from modaloom.errors import ConfigError
from modaloom.interop.hf.bert import (
    BERT_EMBEDDINGS,
    HF_IGNORE,
    check_mlm,
    check_pooled,
    hf_option,
    optional,
    pick_architecture,
    refuse,
    target_labels,
)
from modaloom.interop.hf.family import OUR_ACTIVATIONS, HFFamily, Needs, activation_from_hf, register_family
from modaloom.interop.hf.mapping import Mapping, renames, wb
from modaloom.model_config import EmbeddingConfig, EncoderConfig, ModelConfig, TargetConfig

ALBERT_SHARED_LAYER = [  # under albert.encoder.albert_layer_groups.0.albert_layers.0. -> encoder.stack.layers.0.
    *wb("attention.query", "self_attn.query"),
    *wb("attention.key", "self_attn.key"),
    *wb("attention.value", "self_attn.value"),
    *wb("attention.dense", "self_attn.output"),
    *wb("attention.LayerNorm", "self_attn_norm"),
    *wb("ffn", "feed_forward.linear_in"),
    *wb("ffn_output", "feed_forward.linear_out"),
    *wb("full_layer_layer_norm", "feed_forward_norm"),
]
ALBERT_ENCODER = [
    *renames(BERT_EMBEDDINGS, "albert."),
    *renames(wb("albert.encoder.embedding_hidden_mapping_in", "encoder.stack.input_projection")),
    *renames(ALBERT_SHARED_LAYER, "albert.encoder.albert_layer_groups.0.albert_layers.0.", "encoder.stack.layers.0."),
]
ALBERT_MLM_HEAD = renames([*wb("dense", "dense"), *wb("LayerNorm", "norm"), ("bias", "output.bias")],
                          "predictions.", "targets.{mlm}.head.")
ALBERT_POOLER = renames(wb("albert.pooler", "targets.{sp}.pooler"))
ALBERT_SOP = renames(wb("sop_classifier.classifier", "targets.{sp}.output"))
ALBERT_CLASSIFIER = renames([*wb("albert.pooler", "targets.{cls}.pooler"), *wb("classifier", "targets.{cls}.output")])
ALBERT_ALIASES = {
    "predictions.decoder.bias": "predictions.bias",
    "predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
}


class AlbertFamily(HFFamily):
    model_types = ("albert",)
    architectures = {
        "AlbertForPreTraining": "mlm + sop heads",
        "AlbertForMaskedLM": "mlm head",
        "AlbertForSequenceClassification": "pooler + classifier (cls target)",
        "AlbertModel": "no head (mlm + sop targets, heads randomly initialised, pooler kept)",
    }
    base_architecture = "AlbertModel"
    by_targets = {("mlm", "sp"): "AlbertForPreTraining", ("mlm",): "AlbertForMaskedLM",
                  ("cls",): "AlbertForSequenceClassification"}

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        refuse(c, "position_embedding_type", "absolute", "absolute")
        refuse(c, "num_hidden_groups", 1, 1)
        refuse(c, "inner_group_num", 1, 1)
        refuse(c, "tie_word_embeddings", True, True)
        if c.embedding_size == c.hidden_size:
            raise ConfigError(
                f"ALBERT with embedding_size == hidden_size ({c.hidden_size}) is not supported: modaloom's "
                f"encoder has an input projection only when the sizes differ"
            )
        act = activation_from_hf(c.hidden_act, "hidden_act")
        embedding = EmbeddingConfig(
            parts=["word", "pos", "seg"], vocab_size=c.vocab_size, emb_size=c.embedding_size,
            max_seq_length=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
            pad_id=c.pad_token_id if c.pad_token_id is not None else 0, norm="layernorm",
            norm_eps=c.layer_norm_eps, dropout=c.hidden_dropout_prob,
        )
        encoder = EncoderConfig(
            hidden_size=c.hidden_size, layers_num=c.num_hidden_layers, heads_num=c.num_attention_heads,
            feedforward_size=c.intermediate_size, act=act, norm="layernorm", norm_eps=c.layer_norm_eps,
            norm_position="post", mask="fully_visible", dropout=c.hidden_dropout_prob,
            attention_dropout=c.attention_probs_dropout_prob, share_layers=True,
        )
        mlm = TargetConfig(type="mlm", act=act, norm="layernorm", norm_eps=c.layer_norm_eps, tie_weights=True)
        if architecture == "AlbertForSequenceClassification":
            targets = [TargetConfig(type="cls", labels_num=c.num_labels, pooler=True, pooling="first")]
        elif architecture == "AlbertForMaskedLM":
            targets = [mlm]
        else:
            targets = [mlm, TargetConfig(type="sop", pooler=True, pooling="first")]
        return ModelConfig(embedding=embedding, encoder=encoder, targets=targets,
                           init_std=hf_option(c, "initializer_range", 0.02))

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import AlbertConfig

        emb, enc = cfg.embedding, cfg.encoder
        needs = Needs(f"HF {architecture}")
        needs.equal("embedding.parts", emb.parts, ["word", "pos", "seg"])
        needs.equal("embedding.norm", emb.norm, "layernorm")
        needs.equal("embedding.position_offset", emb.position_offset, 0)
        needs.equal("embedding.scale_embedding", emb.scale_embedding, False)
        needs.true(emb.emb_size != enc.hidden_size, "embedding.emb_size equals encoder.hidden_size")
        needs.true(cfg.decoder is None, "the model has a decoder")
        needs.equal("encoder.type", enc.type, "transformer")
        needs.equal("encoder.share_layers", enc.share_layers, True)
        needs.equal("encoder.norm", enc.norm, "layernorm")
        needs.equal("encoder.norm_position", enc.norm_position, "post")
        needs.equal("encoder.final_norm", enc.use_final_norm, False)
        needs.equal("encoder.mask", enc.mask, "fully_visible")
        needs.equal("encoder.position", enc.position, "none")
        needs.equal("encoder.feed_forward", enc.feed_forward, "dense")
        needs.equal("encoder.bias", enc.bias, True)
        needs.true(enc.kv_heads_num in (0, enc.heads_num), "encoder.kv_heads_num differs from heads_num")
        needs.true(enc.head_dim * enc.heads_num == enc.hidden_size, "encoder.head_size * heads_num != hidden_size")
        needs.equal("embedding.norm_eps (one layer_norm_eps in HF)", emb.norm_eps, enc.norm_eps)
        needs.true(enc.act in OUR_ACTIVATIONS, f"encoder.act {enc.act!r} has no HF name")
        needs.true(all(t.tie_weights for t in cfg.targets if t.type == "mlm"), "the mlm target is not tied")
        check_mlm(needs, cfg)
        check_pooled(needs, cfg)
        needs.check()
        cls = [t for t in cfg.targets if t.type == "cls"]
        return AlbertConfig(
            vocab_size=emb.vocab_size, embedding_size=emb.emb_size, hidden_size=enc.hidden_size,
            num_hidden_layers=enc.layers_num, num_attention_heads=enc.heads_num,
            intermediate_size=enc.feedforward_size, hidden_act=OUR_ACTIVATIONS[enc.act],
            hidden_dropout_prob=enc.dropout,
            attention_probs_dropout_prob=enc.dropout if enc.attention_dropout is None else enc.attention_dropout,
            max_position_embeddings=emb.max_seq_length, type_vocab_size=emb.type_vocab_size,
            layer_norm_eps=enc.norm_eps, pad_token_id=emb.pad_id, initializer_range=cfg.init_std,
            num_labels=cls[0].labels_num if cls else 2,
        )

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, self.by_targets, "ALBERT")

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        rules = list(ALBERT_ENCODER)
        if architecture == "AlbertForPreTraining":
            rules += ALBERT_MLM_HEAD + ALBERT_POOLER + ALBERT_SOP
        elif architecture == "AlbertForMaskedLM":
            rules += ALBERT_MLM_HEAD
        elif architecture == "AlbertForSequenceClassification":
            rules += ALBERT_CLASSIFIER
        else:
            rules += optional(ALBERT_MLM_HEAD) + optional(ALBERT_POOLER) + optional(ALBERT_SOP)
        return Mapping(rules, names=target_labels(cfg), hf_ignore=HF_IGNORE, hf_aliases=dict(ALBERT_ALIASES))


register_family(AlbertFamily())
