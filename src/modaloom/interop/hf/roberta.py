"""RoBERTa and XLM-R: BERT layers, learned positions starting at padding_idx + 1, an MLM-only head.

HF computes position ids as ``padding_idx + 1 + index`` over real tokens, which is our
``embedding.position_offset = pad_id + 1`` for right-padded batches. A headless checkpoint
(``RobertaModel``) gets an mlm target whose transform is randomly initialised; its pooler, unused by
pre-training, is not carried over (exporting back as ``RobertaModel`` lets HF initialise a new one).
"""

from __future__ import annotations

from typing import Any

from modaloom.interop.hf.bert import (
    HF_IGNORE,
    check_mlm,
    check_pooled,
    check_post_norm_encoder,
    encoder_rules,
    hf_option,
    mlm_target,
    mlm_tied,
    optional,
    pick_architecture,
    post_norm_encoder,
    refuse,
    target_labels,
)
from modaloom.interop.hf.family import OUR_ACTIVATIONS, HFFamily, Needs, activation_from_hf, register_family
from modaloom.interop.hf.mapping import Mapping, renames, wb
from modaloom.model_config import EmbeddingConfig, ModelConfig, TargetConfig

ROBERTA_MLM_HEAD = [  # under lm_head. -> targets.{mlm}.head.
    *wb("dense", "dense"),
    *wb("layer_norm", "norm"),
    ("bias", "output.bias"),
]
ROBERTA_CLASSIFIER = [*wb("classifier.dense", "targets.{cls}.pooler"), *wb("classifier.out_proj", "targets.{cls}.output")]


class RobertaFamily(HFFamily):
    base_architecture = ""

    def __init__(self, model_type: str, class_prefix: str, config_class: str) -> None:
        self.model_types = (model_type,)
        self.class_prefix = class_prefix
        self.config_class = config_class
        self.base_architecture = f"{class_prefix}Model"
        self.architectures = {
            f"{class_prefix}ForMaskedLM": "mlm head",
            f"{class_prefix}ForSequenceClassification": "dense + tanh + out_proj (cls target)",
            f"{class_prefix}Model": "no head (mlm target randomly initialised; pooler not carried over)",
        }
        self.by_targets = {("mlm",): f"{class_prefix}ForMaskedLM", ("cls",): f"{class_prefix}ForSequenceClassification"}

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        refuse(c, "position_embedding_type", "absolute", "absolute")
        refuse(c, "is_decoder", False, False)
        act = activation_from_hf(c.hidden_act, "hidden_act")
        pad = c.pad_token_id if c.pad_token_id is not None else 1
        embedding = EmbeddingConfig(
            parts=["word", "pos", "seg"], vocab_size=c.vocab_size, emb_size=c.hidden_size,
            max_seq_length=c.max_position_embeddings - (pad + 1), position_offset=pad + 1,
            type_vocab_size=c.type_vocab_size, pad_id=pad, norm="layernorm", norm_eps=c.layer_norm_eps,
            dropout=c.hidden_dropout_prob,
        )
        if architecture.endswith("ForSequenceClassification"):
            targets = [TargetConfig(type="cls", labels_num=c.num_labels, pooler=True, pooling="first")]
        else:
            # RobertaLMHead applies exact gelu whatever hidden_act says.
            targets = [mlm_target(c, "gelu", bool(hf_option(c, "tie_word_embeddings", True)))]
        return ModelConfig(embedding=embedding, encoder=post_norm_encoder(c, act), targets=targets,
                           init_std=c.initializer_range)

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        import transformers

        emb, enc = cfg.embedding, cfg.encoder
        needs = Needs(f"HF {architecture}")
        needs.true(emb.position_offset > 0, "embedding.position_offset is 0 (RoBERTa needs pad_id + 1)")
        check_post_norm_encoder(needs, cfg, ["word", "pos", "seg"], emb.pad_id + 1)
        needs.equal("embedding.emb_size", emb.emb_size, enc.hidden_size)
        check_mlm(needs, cfg, act="gelu")
        check_pooled(needs, cfg)
        needs.check()
        cls = [t for t in cfg.targets if t.type == "cls"]
        return getattr(transformers, self.config_class)(
            vocab_size=emb.vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.layers_num,
            num_attention_heads=enc.heads_num, intermediate_size=enc.feedforward_size,
            hidden_act=OUR_ACTIVATIONS[enc.act], hidden_dropout_prob=enc.dropout,
            attention_probs_dropout_prob=enc.dropout if enc.attention_dropout is None else enc.attention_dropout,
            max_position_embeddings=emb.max_seq_length + emb.position_offset,
            type_vocab_size=emb.type_vocab_size, layer_norm_eps=enc.norm_eps, pad_token_id=emb.pad_id,
            initializer_range=cfg.init_std, tie_word_embeddings=mlm_tied(cfg),
            num_labels=cls[0].labels_num if cls else 2,
        )

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, self.by_targets, self.class_prefix)

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        rules = encoder_rules("roberta")
        aliases, unused = {}, {}
        mlm = renames(ROBERTA_MLM_HEAD, "lm_head.", "targets.{mlm}.head.")
        if mlm_tied(cfg):
            aliases["lm_head.decoder.bias"] = "lm_head.bias"
            aliases["lm_head.decoder.weight"] = "roberta.embeddings.word_embeddings.weight"
        else:  # untied: the decoder's own bias is used, lm_head.bias is not read
            mlm = renames(ROBERTA_MLM_HEAD[:-1], "lm_head.", "targets.{mlm}.head.") + renames(
                wb("lm_head.decoder", "targets.{mlm}.head.output"))
            unused["lm_head.bias"] = "lm_head.decoder.bias"
        ignore = HF_IGNORE
        if architecture.endswith("ForMaskedLM"):
            rules += mlm
        elif architecture.endswith("ForSequenceClassification"):
            rules += renames(ROBERTA_CLASSIFIER)
        else:
            rules += optional(mlm)
            ignore = (*HF_IGNORE, r"roberta\.pooler\..*")
        return Mapping(rules, counts={"i": cfg.encoder.layers_num}, names=target_labels(cfg),
                       hf_ignore=ignore, hf_aliases=aliases, hf_unused=unused)


register_family(RobertaFamily("roberta", "Roberta", "RobertaConfig"))
register_family(RobertaFamily("xlm-roberta", "XLMRoberta", "XLMRobertaConfig"))
