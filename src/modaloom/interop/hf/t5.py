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

from modaloom.config_schema import Source, build
from modaloom.errors import ConfigError
from modaloom.interop.hf.family import OUR_ACTIVATIONS, HFFamily, Needs, activation_from_hf, register_family
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


def _lm(cfg: ModelConfig):
    return next((t for t in cfg.targets if t.type == "lm"), None)


class T5Family(HFFamily):
    model_types = ("t5",)
    architectures = {
        "T5ForConditionalGeneration": "encoder-decoder with the LM head",
        "T5Model": "encoder-decoder without a head",
    }
    base_architecture = "T5Model"

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
        return build(ModelConfig, data, Source(f"HF {architecture} config"), "model")

    def architecture_for(self, cfg: ModelConfig) -> str:
        return "T5ForConditionalGeneration" if _lm(cfg) is not None else "T5Model"

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import T5Config

        needs = Needs("T5")
        enc, dec, emb = cfg.encoder, cfg.decoder, cfg.embedding
        needs.true(dec is not None and cfg.tgt_embedding is not None, "T5 needs a decoder")
        if dec is None or cfg.tgt_embedding is None:
            needs.check()
        needs.equal("embedding.parts", emb.parts, ["word"])
        needs.equal("tgt_embedding.parts", cfg.tgt_embedding.parts, ["word"])
        needs.equal("embedding.norm", emb.norm, "none")
        needs.equal("tgt_embedding.norm", cfg.tgt_embedding.norm, "none")
        needs.equal("embedding.scale_embedding", emb.scale_embedding, False)
        needs.equal("share_embedding", cfg.share_embedding, True)
        needs.equal("embedding.emb_size", emb.emb_size, enc.hidden_size)
        for name, stack, mask in (("encoder", enc, "fully_visible"), ("decoder", dec, "causal")):
            needs.equal(f"{name}.type", stack.type, "transformer")
            needs.true(stack.norm in ("t5", "rms"), f"{name}.norm is {stack.norm!r} (needs 't5')")
            needs.equal(f"{name}.norm_position", stack.norm_position, "pre")
            needs.equal(f"{name}.use_final_norm", stack.use_final_norm, True)
            needs.equal(f"{name}.position", stack.position, "relative")
            needs.equal(f"{name}.bias", stack.bias, False)
            needs.equal(f"{name}.attention_scale", stack.attention_scale, False)
            needs.equal(f"{name}.mask", stack.mask, mask)
            needs.equal(f"{name}.share_layers", stack.share_layers, False)
            needs.true(stack.kv_heads_num in (0, stack.heads_num), f"{name}.kv_heads_num must equal heads_num")
            needs.true(stack.act in OUR_ACTIVATIONS, f"{name}.act {stack.act!r} has no HF name")
            for key in ("hidden_size", "heads_num", "head_dim", "feedforward_size", "act", "feed_forward",
                        "norm_eps", "relative_buckets", "relative_max_distance"):
                if name == "decoder":
                    needs.equal(f"decoder.{key}", getattr(dec, key), getattr(enc, key))
        lm = _lm(cfg)
        if lm is not None:
            needs.equal("lm target transform", lm.transform, False)
            needs.equal("lm target output_bias", lm.output_bias, False)
            needs.true(lm.source != "encoder", "the lm target must read the decoder")
        others = [t.type for t in cfg.targets if t.type != "lm"]
        needs.true(not others, f"T5 has no place for targets {others}")
        needs.check()
        act = OUR_ACTIVATIONS[enc.act]
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
        lm = _lm(cfg)
        if lm is not None:
            if lm.tie_weights:
                aliases[P + "lm_head.weight"] = P + "shared.weight"
            else:  # optional: T5Model has no head
                rules.append(Rule(P + "lm_head.weight", f"targets.{lm.label}.head.output.weight", optional=True))
        return Mapping(rules, counts={"i": cfg.encoder.layers_num, "j": cfg.decoder.layers_num},
                       hf_aliases=aliases)


register_family(T5Family())
