"""RoBERTa and XLM-R: BERT layers, learned positions starting at padding_idx + 1, an MLM-only head.

HF computes position ids as ``padding_idx + 1 + index`` over real tokens, which is our
``embedding.position_offset = pad_id + 1`` for right-padded batches. A headless checkpoint
(``RobertaModel``) gets an mlm target whose transform is randomly initialised; its pooler, unused by
pre-training, is not carried over (exporting back as ``RobertaModel`` lets HF initialise a new one).
"""

from __future__ import annotations

from typing import Any

from modaloom.interop.hf.bert import (
    BERT_EXPORT_IGNORE,
    HF_IGNORE,
    bert_embedding,
    bert_options,
    encoder_rules,
    head_rules,
    head_targets,
    mlm_head_rules,
    mlm_target,
    mlm_tied,
    pick_architecture,
    post_norm_encoder,
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

    export_ignore = BERT_EXPORT_IGNORE

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        refuse(c, "position_embedding_type", "absolute", "absolute")
        refuse(c, "is_decoder", False, False)
        act = activation_from_hf(c.hidden_act, "hidden_act")
        pad = c.pad_token_id if c.pad_token_id is not None else 1
        embedding = bert_embedding(c, 1, position_offset=pad + 1)
        embedding["max_seq_length"] -= pad + 1
        # RobertaLMHead applies exact gelu whatever hidden_act says.
        mlm = mlm_target(c, "gelu", bool(hf_option(c, "tie_word_embeddings", True)))
        targets = head_targets(c, architecture, mlm, None)
        return build_config(dict(embedding=embedding, encoder=post_norm_encoder(c, act), targets=targets,
                                 init_std=c.initializer_range), architecture)

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        import transformers

        options = bert_options(cfg)
        options["max_position_embeddings"] += cfg.embedding.position_offset
        return getattr(transformers, self.config_class)(**options, tie_word_embeddings=mlm_tied(cfg))

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, self.by_targets, self.class_prefix)

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        mlm, aliases, unused = mlm_head_rules(cfg, ROBERTA_MLM_HEAD, "lm_head.",
                                              "roberta.embeddings.word_embeddings.weight")
        rules = encoder_rules("roberta") + head_rules(architecture, mlm, [], [], renames(ROBERTA_CLASSIFIER))
        # the headless class's pooler is unused by pre-training and not carried over
        ignore = HF_IGNORE if architecture != self.base_architecture else (*HF_IGNORE, r"roberta\.pooler\..*")
        return Mapping(rules, counts={"i": cfg.encoder.layers_num}, names=target_labels(cfg),
                       hf_ignore=ignore, hf_aliases=aliases, hf_unused=unused)


register_family(RobertaFamily("roberta", "Roberta", "RobertaConfig"))
register_family(RobertaFamily("xlm-roberta", "XLMRoberta", "XLMRobertaConfig"))
