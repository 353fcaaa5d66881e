"""BERT (and the BERT-layout layers RoBERTa reuses): post-norm encoder, MLM + NSP heads.

Headless checkpoints (``BertModel``, e.g. all-MiniLM-L6-v2) become a model with the pre-training targets
mlm + sp: the pooler carries over into the sp target, while the MLM transform and the NSP output layer
keep their random initialisation and are listed in ``HFConversion.random_init``. Exporting such a model
back as ``BertModel`` reproduces the checkpoint exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from modaloom.errors import ConfigError
from modaloom.interop.hf.extras import check_tagger_head
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    attention_dropout,
    build_config,
    first_target,
    hf_activation,
    hf_option,
    refuse,
    register_family,
)
from modaloom.interop.hf.mapping import Mapping, Rule, renames, wb
from modaloom.model_config import ModelConfig

# One post-norm layer, HF suffix under ``<prefix>.encoder.layer.{i}.`` -> ours under ``encoder.stack.layers.{i}.``
BERT_LAYER = [
    *wb("attention.self.query", "self_attn.query"),
    *wb("attention.self.key", "self_attn.key"),
    *wb("attention.self.value", "self_attn.value"),
    *wb("attention.output.dense", "self_attn.output"),
    *wb("attention.output.LayerNorm", "self_attn_norm"),
    *wb("intermediate.dense", "feed_forward.linear_in"),
    *wb("output.dense", "feed_forward.linear_out"),
    *wb("output.LayerNorm", "feed_forward_norm"),
]
BERT_EMBEDDINGS = [
    ("embeddings.word_embeddings.weight", "embedding.parts.word.weight"),
    ("embeddings.position_embeddings.weight", "embedding.parts.pos.weight"),
    ("embeddings.token_type_embeddings.weight", "embedding.parts.seg.weight"),
    *wb("embeddings.LayerNorm", "embedding.norm"),
]
BERT_MLM_HEAD = [  # under cls.predictions. -> targets.{mlm}.head.
    *wb("transform.dense", "dense"),
    *wb("transform.LayerNorm", "norm"),
    ("bias", "output.bias"),
]
BERT_POOLER = wb("bert.pooler.dense", "targets.{sp}.pooler")
BERT_NSP = wb("cls.seq_relationship", "targets.{sp}.output")
BERT_CLASSIFIER = [*wb("bert.pooler.dense", "targets.{cls}.pooler"), *wb("classifier", "targets.{cls}.output")]
BERT_TAGGER = wb("classifier", "targets.{tagger}.output")  # BertForTokenClassification (no pooler)
HF_IGNORE = (r".*\.position_ids", r".*\.token_type_ids")  # buffers older checkpoints stored


def encoder_rules(prefix: str) -> list[Rule]:
    """Embeddings and layers of a BERT-layout encoder whose HF modules live under ``prefix``."""
    return [
        *renames(BERT_EMBEDDINGS, f"{prefix}."),
        *renames(BERT_LAYER, f"{prefix}.encoder.layer.{{i}}.", "encoder.stack.layers.{i}."),
    ]


def optional(rules: list[Rule]) -> list[Rule]:
    return [replace(r, optional=True) for r in rules]


def target_labels(cfg: ModelConfig) -> dict[str, str]:
    """{type: label} of the first target of each type (placeholder names for the tables; absent types
    default to their own name, so that a rule needing them reports the missing keys)."""
    out: dict[str, str] = {}
    for t in cfg.targets:
        kind = {"nsp": "sp", "sop": "sp"}.get(t.type, t.type)
        out.setdefault(kind, t.label)
    return {**{k: k for k in ("mlm", "sp", "lm", "cls", "tagger")}, **out}


def target_kinds(cfg: ModelConfig) -> tuple[str, ...]:
    return tuple(sorted({{"nsp": "sp", "sop": "sp"}.get(t.type, t.type) for t in cfg.targets}))


# BERT-layout HF configs have no dropout of their own for the embeddings (they use hidden_dropout_prob).
BERT_EXPORT_IGNORE = ("embedding.dropout",)


def bert_embedding(c: Any, pad_default: int, **extra: Any) -> dict[str, Any]:
    """The word + position + segment embedding of a BERT-layout HF config, in our dict layout."""
    return {**dict(parts=["word", "pos", "seg"], vocab_size=c.vocab_size, emb_size=c.hidden_size,
                   max_seq_length=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                   pad_id=c.pad_token_id if c.pad_token_id is not None else pad_default, norm="layernorm",
                   norm_eps=c.layer_norm_eps, dropout=c.hidden_dropout_prob), **extra}


def post_norm_encoder(c: Any, act: str, **extra: Any) -> dict[str, Any]:
    return dict(type="transformer", hidden_size=c.hidden_size, layers_num=c.num_hidden_layers,
                heads_num=c.num_attention_heads, feedforward_size=c.intermediate_size, act=act, norm="layernorm",
                norm_eps=c.layer_norm_eps, norm_position="post", mask="fully_visible",
                dropout=c.hidden_dropout_prob, attention_dropout=c.attention_probs_dropout_prob, **extra)


def mlm_target(c: Any, act: str, tied: bool) -> dict[str, Any]:
    return dict(type="mlm", act=act, norm="layernorm", norm_eps=c.layer_norm_eps, tie_weights=tied)


POOLED = dict(pooler=True, pooling="first")


def bert_options(cfg: ModelConfig) -> dict[str, Any]:
    """The options BERT, RoBERTa and ALBERT configs share, from our config (the embedding sizes excepted)."""
    emb, enc = cfg.embedding, cfg.encoder
    cls = first_target(cfg, "cls", "tagger")
    return dict(
        vocab_size=emb.vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.layers_num,
        num_attention_heads=enc.heads_num, intermediate_size=enc.feedforward_size,
        hidden_act=hf_activation(enc.act), hidden_dropout_prob=enc.dropout,
        attention_probs_dropout_prob=attention_dropout(enc), max_position_embeddings=emb.max_seq_length,
        type_vocab_size=emb.type_vocab_size, layer_norm_eps=enc.norm_eps, pad_token_id=emb.pad_id,
        initializer_range=cfg.init_std, num_labels=cls.labels_num if cls is not None else 2,
    )


def mlm_tied(cfg: ModelConfig) -> bool:
    return any(t.tie_weights for t in cfg.targets if t.type == "mlm") or not any(
        t.type == "mlm" for t in cfg.targets)


def head_targets(c: Any, architecture: str, mlm: dict[str, Any], sp_type: str | None) -> list[dict[str, Any]]:
    """The targets of a BERT-like HF class: cls for ...ForSequenceClassification, mlm for ...ForMaskedLM,
    else mlm plus sentence prediction of ``sp_type`` (None: the family has none)."""
    if architecture.endswith("ForSequenceClassification"):
        return [dict(type="cls", labels_num=c.num_labels, **POOLED)]
    if architecture.endswith("ForMaskedLM") or sp_type is None:
        return [mlm]
    return [mlm, dict(type=sp_type, **POOLED)]


def head_rules(architecture: str, mlm: list[Rule], pooler: list[Rule], sp: list[Rule],
               classifier: list[Rule]) -> list[Rule]:
    """The head rules of a BERT-like HF class; all optional for the headless class (import: random
    init; export: left out)."""
    if architecture.endswith("ForPreTraining"):
        return mlm + pooler + sp
    if architecture.endswith("ForMaskedLM"):
        return mlm
    if architecture.endswith("ForSequenceClassification"):
        return classifier
    return optional(mlm) + optional(pooler) + optional(sp)


def mlm_head_rules(cfg: ModelConfig, table: list[tuple[str, str]], hf_head: str,
                   word_embeddings: str) -> tuple[list[Rule], dict[str, str], dict[str, str]]:
    """(rules, HF aliases, HF unused keys) of a BERT-like MLM head under ``hf_head`` (``table`` ends with
    its shared ``bias``). Tied, the decoder is an alias of the word embeddings and of that bias; untied,
    transformers unties the bias too and its forward reads the decoder's own, so ``bias`` is an unused copy."""
    ours = "targets.{mlm}.head."
    if mlm_tied(cfg):
        aliases = {f"{hf_head}decoder.bias": f"{hf_head}bias", f"{hf_head}decoder.weight": word_embeddings}
        return renames(table, hf_head, ours), aliases, {}
    rules = renames(table[:-1], hf_head, ours) + renames(wb(f"{hf_head}decoder", ours + "output"))
    return rules, {}, {f"{hf_head}bias": f"{hf_head}decoder.bias"}


def pretraining_architectures(prefix: str, sp: str) -> tuple[dict[str, str], dict[tuple[str, ...], str]]:
    """(architectures, HF class by target kinds) of a BERT-like family with an ``sp`` pre-training head."""
    architectures = {
        f"{prefix}ForPreTraining": f"mlm + {sp} heads",
        f"{prefix}ForMaskedLM": "mlm head",
        f"{prefix}ForSequenceClassification": "pooler + classifier (cls target)",
        f"{prefix}Model": f"no head (mlm + {sp} targets, heads randomly initialised, pooler kept)",
    }
    by_targets = {("mlm", "sp"): f"{prefix}ForPreTraining", ("mlm",): f"{prefix}ForMaskedLM",
                  ("cls",): f"{prefix}ForSequenceClassification"}
    return architectures, by_targets


def pick_architecture(cfg: ModelConfig, by_targets: dict[tuple[str, ...], str], what: str) -> str:
    kinds = target_kinds(cfg)
    if kinds not in by_targets:
        valid = "; ".join(f"{'+'.join(k)} -> {a}" for k, a in by_targets.items())
        raise ConfigError(f"no {what} architecture has the targets {'+'.join(kinds)}; valid: {valid}")
    return by_targets[kinds]


class BertFamily(HFFamily):
    model_types = ("bert",)
    architectures, by_targets = pretraining_architectures("Bert", "nsp")
    architectures = {**architectures, "BertForTokenClassification": "per-token classifier (tagger target)"}
    by_targets = {**by_targets, ("tagger",): "BertForTokenClassification"}
    base_architecture = "BertModel"
    export_ignore = BERT_EXPORT_IGNORE

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        refuse(c, "position_embedding_type", "absolute", "absolute")
        refuse(c, "is_decoder", False, False)
        act = activation_from_hf(c.hidden_act, "hidden_act")
        tied = bool(hf_option(c, "tie_word_embeddings", True))
        if architecture == "BertForTokenClassification":
            targets = [dict(type="tagger", labels_num=c.num_labels)]
        else:
            targets = head_targets(c, architecture, mlm_target(c, act, tied), "sp")
        return build_config(dict(embedding=bert_embedding(c, 0), encoder=post_norm_encoder(c, act),
                                 targets=targets, init_std=c.initializer_range), architecture)

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import BertConfig

        if architecture == "BertForTokenClassification":
            check_tagger_head(cfg)
        return BertConfig(**bert_options(cfg), tie_word_embeddings=mlm_tied(cfg))

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, self.by_targets, "BERT")

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        mlm, aliases, unused = mlm_head_rules(cfg, BERT_MLM_HEAD, "cls.predictions.",
                                              "bert.embeddings.word_embeddings.weight")
        if architecture == "BertForTokenClassification":
            heads = renames(BERT_TAGGER)
        else:
            heads = head_rules(architecture, mlm, renames(BERT_POOLER), renames(BERT_NSP), renames(BERT_CLASSIFIER))
        rules = encoder_rules("bert") + heads
        return Mapping(rules, counts={"i": cfg.encoder.layers_num}, names=target_labels(cfg),
                       hf_ignore=HF_IGNORE, hf_aliases=aliases, hf_unused=unused)


register_family(BertFamily())
