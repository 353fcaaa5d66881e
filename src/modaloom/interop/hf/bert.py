"""BERT (and the BERT-layout layers RoBERTa reuses): post-norm encoder, MLM + NSP heads.

Headless checkpoints (``BertModel``, e.g. all-MiniLM-L6-v2) become a model with the pre-training targets
mlm + sp: the pooler carries over into the sp target, while the MLM transform and the NSP output layer
keep their random initialisation and are listed in ``HFConversion.random_init``. Exporting such a model
back as ``BertModel`` reproduces the checkpoint exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from modaloom.interop.hf.family import OUR_ACTIVATIONS, HFFamily, Needs, activation_from_hf, register_family
from modaloom.interop.hf.mapping import Mapping, Rule, renames, wb
from modaloom.model_config import EmbeddingConfig, EncoderConfig, ModelConfig, TargetConfig

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
    return {**{k: k for k in ("mlm", "sp", "lm", "cls")}, **out}


def target_kinds(cfg: ModelConfig) -> tuple[str, ...]:
    return tuple(sorted({{"nsp": "sp", "sop": "sp"}.get(t.type, t.type) for t in cfg.targets}))


def hf_option(hf_config: Any, name: str, default: Any) -> Any:
    return getattr(hf_config, name, default)


def refuse(hf_config: Any, option: str, supported: Any, default: Any) -> None:
    from modaloom.errors import ConfigError

    value = hf_option(hf_config, option, default)
    if value != supported:
        raise ConfigError(
            f"HF option {option}={value!r} of model_type {hf_config.model_type!r} is not supported "
            f"(modaloom reproduces {option}={supported!r})"
        )


def post_norm_encoder(c: Any, act: str) -> EncoderConfig:
    return EncoderConfig(
        hidden_size=c.hidden_size, layers_num=c.num_hidden_layers, heads_num=c.num_attention_heads,
        feedforward_size=c.intermediate_size, act=act, norm="layernorm", norm_eps=c.layer_norm_eps,
        norm_position="post", mask="fully_visible", dropout=c.hidden_dropout_prob,
        attention_dropout=c.attention_probs_dropout_prob,
    )


def mlm_target(c: Any, act: str, tied: bool) -> TargetConfig:
    return TargetConfig(type="mlm", act=act, norm="layernorm", norm_eps=c.layer_norm_eps, tie_weights=tied)


def check_post_norm_encoder(needs: Needs, cfg: ModelConfig, parts: list[str], position_offset: int) -> None:
    emb, enc = cfg.embedding, cfg.encoder
    needs.equal("embedding.parts", emb.parts, parts)
    needs.equal("embedding.norm", emb.norm, "layernorm")
    needs.equal("embedding.scale_embedding", emb.scale_embedding, False)
    needs.equal("embedding.position_offset", emb.position_offset, position_offset)
    needs.true(cfg.decoder is None, "the model has a decoder")
    needs.equal("encoder.type", enc.type, "transformer")
    needs.equal("encoder.norm", enc.norm, "layernorm")
    needs.equal("encoder.norm_position", enc.norm_position, "post")
    needs.equal("encoder.final_norm", enc.use_final_norm, False)
    needs.equal("encoder.mask", enc.mask, "fully_visible")
    needs.equal("encoder.position", enc.position, "none")
    needs.equal("encoder.feed_forward", enc.feed_forward, "dense")
    needs.equal("encoder.bias", enc.bias, True)
    needs.equal("encoder.attention_scale", enc.attention_scale, True)
    needs.equal("encoder.share_layers", enc.share_layers, False)
    needs.true(enc.kv_heads_num in (0, enc.heads_num), "encoder.kv_heads_num differs from heads_num")
    needs.true(enc.head_dim * enc.heads_num == enc.hidden_size, "encoder.head_size * heads_num != hidden_size")
    needs.equal("embedding.norm_eps (one layer_norm_eps in HF)", emb.norm_eps, enc.norm_eps)
    needs.true(enc.act in OUR_ACTIVATIONS, f"encoder.act {enc.act!r} has no HF name")


def check_mlm(needs: Needs, cfg: ModelConfig, act: str | None = None) -> None:
    """The mlm head's shape in BERT-like HF heads; ``act`` is the head activation (default: the encoder's)."""
    for t in cfg.targets:
        if t.type != "mlm":
            continue
        needs.equal(f"targets.{t.label}.transform", t.transform, True)
        needs.equal(f"targets.{t.label}.output_bias", t.output_bias, True)
        needs.equal(f"targets.{t.label}.norm", t.norm, "layernorm")
        needs.equal(f"targets.{t.label}.act", t.act, act or cfg.encoder.act)
        needs.equal(f"targets.{t.label}.norm_eps", t.norm_eps, cfg.encoder.norm_eps)
        needs.equal(f"targets.{t.label}.scale_before_output", t.scale_before_output, False)
        needs.true(t.vocab_size in (0, cfg.embedding.vocab_size), f"targets.{t.label}.vocab_size differs")


def check_pooled(needs: Needs, cfg: ModelConfig) -> None:
    for t in cfg.targets:
        if t.type in ("sp", "nsp", "sop", "cls"):
            needs.equal(f"targets.{t.label}.pooler", t.pooler, True)
            needs.equal(f"targets.{t.label}.pooling", t.pooling, "first")


def mlm_tied(cfg: ModelConfig) -> bool:
    return any(t.tie_weights for t in cfg.targets if t.type == "mlm") or not any(
        t.type == "mlm" for t in cfg.targets)


def pick_architecture(cfg: ModelConfig, by_targets: dict[tuple[str, ...], str], what: str) -> str:
    from modaloom.errors import ConfigError

    kinds = target_kinds(cfg)
    if kinds not in by_targets:
        valid = "; ".join(f"{'+'.join(k)} -> {a}" for k, a in by_targets.items())
        raise ConfigError(f"no {what} architecture has the targets {'+'.join(kinds)}; valid: {valid}")
    return by_targets[kinds]


class BertFamily(HFFamily):
    model_types = ("bert",)
    architectures = {
        "BertForPreTraining": "mlm + nsp heads",
        "BertForMaskedLM": "mlm head",
        "BertForSequenceClassification": "pooler + classifier (cls target)",
        "BertModel": "no head (mlm + sp targets, heads randomly initialised, pooler kept)",
    }
    base_architecture = "BertModel"
    by_targets = {("mlm", "sp"): "BertForPreTraining", ("mlm",): "BertForMaskedLM",
                  ("cls",): "BertForSequenceClassification"}

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        refuse(c, "position_embedding_type", "absolute", "absolute")
        refuse(c, "is_decoder", False, False)
        act = activation_from_hf(c.hidden_act, "hidden_act")
        tied = bool(hf_option(c, "tie_word_embeddings", True))
        embedding = EmbeddingConfig(
            parts=["word", "pos", "seg"], vocab_size=c.vocab_size, emb_size=c.hidden_size,
            max_seq_length=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
            pad_id=c.pad_token_id if c.pad_token_id is not None else 0, norm="layernorm",
            norm_eps=c.layer_norm_eps, dropout=c.hidden_dropout_prob,
        )
        if architecture == "BertForSequenceClassification":
            targets = [TargetConfig(type="cls", labels_num=c.num_labels, pooler=True, pooling="first")]
        elif architecture == "BertForMaskedLM":
            targets = [mlm_target(c, act, tied)]
        else:
            targets = [mlm_target(c, act, tied), TargetConfig(type="sp", pooler=True, pooling="first")]
        return ModelConfig(embedding=embedding, encoder=post_norm_encoder(c, act), targets=targets,
                           init_std=c.initializer_range)

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import BertConfig

        needs = Needs(f"HF {architecture}")
        check_post_norm_encoder(needs, cfg, ["word", "pos", "seg"], 0)
        needs.equal("embedding.emb_size", cfg.embedding.emb_size, cfg.encoder.hidden_size)
        check_mlm(needs, cfg)
        check_pooled(needs, cfg)
        needs.check()
        emb, enc = cfg.embedding, cfg.encoder
        cls = [t for t in cfg.targets if t.type == "cls"]
        return BertConfig(
            vocab_size=emb.vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.layers_num,
            num_attention_heads=enc.heads_num, intermediate_size=enc.feedforward_size,
            hidden_act=OUR_ACTIVATIONS[enc.act], hidden_dropout_prob=enc.dropout,
            attention_probs_dropout_prob=enc.dropout if enc.attention_dropout is None else enc.attention_dropout,
            max_position_embeddings=emb.max_seq_length, type_vocab_size=emb.type_vocab_size,
            layer_norm_eps=enc.norm_eps, pad_token_id=emb.pad_id, initializer_range=cfg.init_std,
            tie_word_embeddings=mlm_tied(cfg), num_labels=cls[0].labels_num if cls else 2,
        )

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, self.by_targets, "BERT")

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        rules = encoder_rules("bert")
        aliases, unused = {}, {}
        mlm = renames(BERT_MLM_HEAD, "cls.predictions.", "targets.{mlm}.head.")
        if mlm_tied(cfg):
            aliases["cls.predictions.decoder.bias"] = "cls.predictions.bias"
            aliases["cls.predictions.decoder.weight"] = "bert.embeddings.word_embeddings.weight"
        else:  # transformers unties the bias too; the decoder's own bias is the one its forward uses
            mlm = renames(BERT_MLM_HEAD[:-1], "cls.predictions.", "targets.{mlm}.head.") + renames(
                wb("cls.predictions.decoder", "targets.{mlm}.head.output"))
            unused["cls.predictions.bias"] = "cls.predictions.decoder.bias"
        pooler, nsp = renames(BERT_POOLER), renames(BERT_NSP)
        if architecture == "BertForPreTraining":
            rules += mlm + pooler + nsp
        elif architecture == "BertForMaskedLM":
            rules += mlm
        elif architecture == "BertForSequenceClassification":
            rules += renames(BERT_CLASSIFIER)
        else:  # BertModel: heads may be absent (import: random init; export: left out)
            rules += optional(mlm) + optional(pooler) + optional(nsp)
        return Mapping(rules, counts={"i": cfg.encoder.layers_num}, names=target_labels(cfg),
                       hf_ignore=HF_IGNORE, hf_aliases=aliases, hf_unused=unused)


register_family(BertFamily())
