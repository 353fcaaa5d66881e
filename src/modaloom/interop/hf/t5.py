"""T5 and T5 v1.1 (``model_type: t5``): pre-norm RMS stacks, relative position bias, no biases, no scaling.

Layout facts the table encodes:
- one word table ``shared`` feeds both stacks (``encoder/decoder.embed_tokens`` are aliases of it);
- the relative position bias lives in block 0 of each stack and is shared by all its layers (ours: one
  ``relative_bias`` per stack); the decoder's is unidirectional;
- T5 v1.1 has a gated feed-forward (``wi_0`` is the gate, ``wi_1`` the linear part) and an output layer
  of its own; original T5 ties ``lm_head`` to ``shared`` and multiplies the decoder output by
  ``d_model ** -0.5`` first (``scale_decoder_outputs``, our ``scale_before_output``).

Keys carry the ``transformer.`` base-model prefix, which the converter adds to T5's prefix-less names.
"""

from __future__ import annotations

from typing import Any

from modaloom.errors import ConfigError
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    build_config,
    first_target,
    hf_activation,
    register_family,
)
from modaloom.interop.hf.mapping import Mapping, Rule
from modaloom.model_config import ModelConfig

P = "transformer."
ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "output"))


def _attention_rules(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.{a}.weight", f"{ours}.{b}.weight") for a, b in ATTENTION]


def _feed_forward_rules(hf: str, ours: str, gated: bool) -> list[Rule]:
    if gated:
        rules = [Rule(f"{hf}.DenseReluDense.wi_0.weight", f"{ours}.feed_forward.linear_gate.weight"),
                 Rule(f"{hf}.DenseReluDense.wi_1.weight", f"{ours}.feed_forward.linear_in.weight")]
    else:
        rules = [Rule(f"{hf}.DenseReluDense.wi.weight", f"{ours}.feed_forward.linear_in.weight")]
    return rules + [Rule(f"{hf}.DenseReluDense.wo.weight", f"{ours}.feed_forward.linear_out.weight"),
                    Rule(f"{hf}.layer_norm.weight", f"{ours}.feed_forward_norm.weight")]


def t5_rules(gated: bool) -> list[Rule]:
    enc, dec = P + "encoder.block.{i}.layer", P + "decoder.block.{j}.layer"
    ours_enc, ours_dec = "encoder.stack.layers.{i}", "decoder.stack.layers.{j}"
    return [
        Rule(P + "shared.weight", "embedding.parts.word.weight"),
        # encoder
        *_attention_rules(f"{enc}.0.SelfAttention", f"{ours_enc}.self_attn"),
        Rule(f"{enc}.0.layer_norm.weight", f"{ours_enc}.self_attn_norm.weight"),
        *_feed_forward_rules(f"{enc}.1", ours_enc, gated),
        Rule(P + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             "encoder.stack.relative_bias.embedding.weight"),
        Rule(P + "encoder.final_layer_norm.weight", "encoder.stack.final_norm.weight"),
        # decoder
        *_attention_rules(f"{dec}.0.SelfAttention", f"{ours_dec}.self_attn"),
        Rule(f"{dec}.0.layer_norm.weight", f"{ours_dec}.self_attn_norm.weight"),
        *_attention_rules(f"{dec}.1.EncDecAttention", f"{ours_dec}.cross_attn"),
        Rule(f"{dec}.1.layer_norm.weight", f"{ours_dec}.cross_attn_norm.weight"),
        *_feed_forward_rules(f"{dec}.2", ours_dec, gated),
        Rule(P + "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             "decoder.stack.relative_bias.embedding.weight"),
        Rule(P + "decoder.final_layer_norm.weight", "decoder.stack.final_norm.weight"),
    ]


TIED_EMBEDDINGS = {P + "encoder.embed_tokens.weight": P + "shared.weight",
                   P + "decoder.embed_tokens.weight": P + "shared.weight"}


def _stack(hf: Any, layers: int, mask: str) -> dict[str, Any]:
    act = activation_from_hf(hf.dense_act_fn, "feed_forward_proj")
    return dict(
        type="transformer", hidden_size=hf.d_model, layers_num=layers, heads_num=hf.num_heads, head_size=hf.d_kv,
        feedforward_size=hf.d_ff, act=act, feed_forward="gated" if hf.is_gated_act else "dense", norm="t5",
        norm_eps=hf.layer_norm_epsilon, norm_position="pre", final_norm=True, mask=mask, position="relative",
        relative_buckets=hf.relative_attention_num_buckets,
        relative_max_distance=hf.relative_attention_max_distance, bias=False, attention_scale=False,
        dropout=hf.dropout_rate,
    )


class T5Family(HFFamily):
    model_types = ("t5",)
    architectures = {
        "T5ForConditionalGeneration": "encoder-decoder with the LM head",
        "T5Model": "encoder-decoder without a head",
    }
    base_architecture = "T5Model"
    export_ignore = (
        "init_std",  # T5 has initializer_factor, a multiplier of its own init rules, not a std
        # one dropout_rate for everything, carried by encoder.dropout
        "embedding.dropout", "tgt_embedding.dropout", "decoder.dropout", "*.attention_dropout",
    )

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        self.check_architecture(architecture)
        scale = bool(getattr(hf_config, "scale_decoder_outputs", True))
        embedding = dict(parts=["word"], vocab_size=hf_config.vocab_size, emb_size=hf_config.d_model, norm="none",
                         dropout=hf_config.dropout_rate, pad_id=hf_config.pad_token_id or 0)
        data = dict(
            embedding=embedding, encoder=_stack(hf_config, hf_config.num_layers, "fully_visible"),
            tgt_embedding=dict(embedding), decoder=_stack(hf_config, hf_config.num_decoder_layers, "causal"),
            share_embedding=True,
            # Original T5 ties the output layer and rescales; v1.1 (tie_word_embeddings: false) does neither.
            targets=[dict(type="lm", transform=False, output_bias=False, tie_weights=scale,
                          scale_before_output=scale, source="decoder")],
        )
        return build_config(data, architecture)

    def architecture_for(self, cfg: ModelConfig) -> str:
        return "T5ForConditionalGeneration" if first_target(cfg, "lm") is not None else "T5Model"

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import T5Config

        enc, emb = cfg.encoder, cfg.embedding
        dec = cfg.decoder or enc  # T5 always has a decoder: one missing here is refused by the round trip
        lm = first_target(cfg, "lm")
        act = hf_activation(enc.act)
        if enc.feed_forward == "gated":
            # "gated-gelu" is HF's historical name for the tanh-approximated gate of T5 v1.1.
            proj = "gated-gelu" if act == "gelu_new" else f"gated-{act}"
        else:
            proj = act
        hf = T5Config(
            vocab_size=emb.vocab_size, d_model=enc.hidden_size, d_kv=enc.head_dim, d_ff=enc.feedforward_size,
            num_layers=enc.layers_num, num_decoder_layers=dec.layers_num, num_heads=enc.heads_num,
            relative_attention_num_buckets=enc.relative_buckets,
            relative_attention_max_distance=enc.relative_max_distance, dropout_rate=enc.dropout,
            layer_norm_epsilon=enc.norm_eps, feed_forward_proj=proj,
            pad_token_id=emb.pad_id, decoder_start_token_id=emb.pad_id,
        )
        hf.scale_decoder_outputs = bool(lm.scale_before_output) if lm is not None else True
        return hf

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        if cfg.decoder is None:
            raise ConfigError("a T5 mapping needs a model with a decoder")
        rules = t5_rules(cfg.encoder.feed_forward == "gated")
        aliases = dict(TIED_EMBEDDINGS)
        lm = first_target(cfg, "lm")
        if lm is not None:
            if lm.tie_weights:
                aliases[P + "lm_head.weight"] = P + "shared.weight"
            else:  # optional: T5Model has no head
                rules.append(Rule(P + "lm_head.weight", f"targets.{lm.label}.head.output.weight", optional=True))
        return Mapping(rules, counts={"i": cfg.encoder.layers_num, "j": cfg.decoder.layers_num},
                       hf_aliases=aliases)


register_family(T5Family())
