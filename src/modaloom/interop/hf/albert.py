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
    BERT_EXPORT_IGNORE,
    HF_IGNORE,
    bert_embedding,
    bert_options,
    head_rules,
    head_targets,
    mlm_head_rules,
    mlm_target,
    pick_architecture,
    post_norm_encoder,
    pretraining_architectures,
    target_labels,
)
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    build_config,
    hf_option,
    refuse,
    register_family,
)
from modaloom.interop.hf.mapping import Mapping, renames, wb
from modaloom.model_config import ModelConfig

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
ALBERT_MLM_HEAD = [*wb("dense", "dense"), *wb("LayerNorm", "norm"), ("bias", "output.bias")]  # under predictions.
ALBERT_POOLER = renames(wb("albert.pooler", "targets.{sp}.pooler"))
ALBERT_SOP = renames(wb("sop_classifier.classifier", "targets.{sp}.output"))
ALBERT_CLASSIFIER = renames([*wb("albert.pooler", "targets.{cls}.pooler"), *wb("classifier", "targets.{cls}.output")])

class AlbertFamily(HFFamily):
    model_types = ("albert",)
    architectures, by_targets = pretraining_architectures("Albert", "sop")
    base_architecture = "AlbertModel"
    export_ignore = BERT_EXPORT_IGNORE

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
        mlm = mlm_target(c, act, True)
        targets = head_targets(c, architecture, mlm, "sop")
        data = dict(embedding=bert_embedding(c, 0, emb_size=c.embedding_size),
                    encoder=post_norm_encoder(c, act, share_layers=True), targets=targets,
                    init_std=hf_option(c, "initializer_range", 0.02))
        return build_config(data, architecture)

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import AlbertConfig

        return AlbertConfig(**bert_options(cfg), embedding_size=cfg.embedding.emb_size)

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, self.by_targets, "ALBERT")

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        # ALBERT's head is always tied (an untied one does not survive the export round trip)
        mlm, aliases, _ = mlm_head_rules(cfg, ALBERT_MLM_HEAD, "predictions.",
                                         "albert.embeddings.word_embeddings.weight")
        rules = ALBERT_ENCODER + head_rules(architecture, mlm, ALBERT_POOLER, ALBERT_SOP, ALBERT_CLASSIFIER)
        return Mapping(rules, names=target_labels(cfg), hf_ignore=HF_IGNORE, hf_aliases=aliases)


register_family(AlbertFamily())
