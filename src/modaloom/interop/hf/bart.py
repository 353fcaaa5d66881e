"""BART (``model_type: bart``): post-norm encoder-decoder with learned positions offset by 2.

Layout facts the table encodes:
- ``model.shared`` feeds both stacks (``model.encoder/decoder.embed_tokens`` are aliases of it), scaled by
  sqrt(d_model) when ``scale_embedding``; each stack has its own positions (2 extra rows in front) and its
  own ``layernorm_embedding`` (our embedding norm);
- the output layer is tied to ``model.shared``; its bias is the ``final_logits_bias`` buffer (1, vocab),
  our output bias (vocab,);
- LayerNorm eps is fixed at 1e-5.

The layer tables are shared with Speech2Text, whose layers carry the same names (pre-norm there).
"""

from __future__ import annotations

from typing import Any

from modaloom.config_schema import Source, build
from modaloom.interop.hf.family import OUR_ACTIVATIONS, HFFamily, Needs, activation_from_hf, register_family
from modaloom.interop.hf.mapping import RESHAPE, Mapping, Rule, renames, wb
from modaloom.model_config import EncoderConfig, ModelConfig

LAYER_NORM_EPS = 1e-5

# fairseq-layout layers: HF suffix under ``<stack>.layers.{i}.`` -> ours under ``<stack>.stack.layers.{i}.``
ENCODER_LAYER = [
    *wb("self_attn.q_proj", "self_attn.query"),
    *wb("self_attn.k_proj", "self_attn.key"),
    *wb("self_attn.v_proj", "self_attn.value"),
    *wb("self_attn.out_proj", "self_attn.output"),
    *wb("self_attn_layer_norm", "self_attn_norm"),
    *wb("fc1", "feed_forward.linear_in"),
    *wb("fc2", "feed_forward.linear_out"),
    *wb("final_layer_norm", "feed_forward_norm"),
]
DECODER_LAYER = [
    *ENCODER_LAYER,
    *wb("encoder_attn.q_proj", "cross_attn.query"),
    *wb("encoder_attn.k_proj", "cross_attn.key"),
    *wb("encoder_attn.v_proj", "cross_attn.value"),
    *wb("encoder_attn.out_proj", "cross_attn.output"),
    *wb("encoder_attn_layer_norm", "cross_attn_norm"),
]


def layer_rules(prefix: str) -> list[Rule]:
    """Encoder layers ``{i}`` and decoder layers ``{j}`` of a fairseq-layout model under ``prefix``."""
    return [
        *renames(ENCODER_LAYER, f"{prefix}encoder.layers.{{i}}.", "encoder.stack.layers.{i}."),
        *renames(DECODER_LAYER, f"{prefix}decoder.layers.{{j}}.", "decoder.stack.layers.{j}."),
    ]


def fairseq_stack(layers: int, heads: int, ffn: int, d_model: int, act: str, norm_position: str,
                  mask: str, dropout: float, attention_dropout: float) -> dict[str, Any]:
    return dict(type="transformer", hidden_size=d_model, layers_num=layers, heads_num=heads,
                feedforward_size=ffn, act=act, norm="layernorm", norm_eps=LAYER_NORM_EPS,
                norm_position=norm_position, final_norm=norm_position == "pre", mask=mask,
                dropout=dropout, attention_dropout=attention_dropout)


def check_fairseq_stack(needs: Needs, name: str, stack: EncoderConfig, d_model: int, norm_position: str,
                        mask: str, act: str) -> None:
    needs.equal(f"{name}.type", stack.type, "transformer")
    needs.equal(f"{name}.hidden_size", stack.hidden_size, d_model)
    needs.equal(f"{name}.head_dim", stack.head_dim, d_model // max(stack.heads_num, 1))
    needs.equal(f"{name}.kv_heads_num", stack.kv_heads_num or stack.heads_num, stack.heads_num)
    needs.equal(f"{name}.norm", stack.norm, "layernorm")
    needs.equal(f"{name}.norm_eps", stack.norm_eps, LAYER_NORM_EPS)
    needs.equal(f"{name}.norm_position", stack.norm_position, norm_position)
    needs.equal(f"{name}.use_final_norm", stack.use_final_norm, norm_position == "pre")
    needs.equal(f"{name}.mask", stack.mask, mask)
    needs.equal(f"{name}.position", stack.position, "none")
    needs.equal(f"{name}.feed_forward", stack.feed_forward, "dense")
    needs.equal(f"{name}.bias", stack.bias, True)
    needs.equal(f"{name}.attention_scale", stack.attention_scale, True)
    needs.equal(f"{name}.share_layers", stack.share_layers, False)
    needs.equal(f"{name}.act", stack.act, act)


def lm_target(cfg: ModelConfig):
    return next((t for t in cfg.targets if t.type == "lm"), None)


def check_lm(needs: Needs, cfg: ModelConfig, model: str, output_bias: bool) -> None:
    lm = lm_target(cfg)
    if lm is not None:
        needs.equal("lm target transform", lm.transform, False)
        needs.equal("lm target output_bias", lm.output_bias, output_bias)
        needs.equal("lm target scale_before_output", lm.scale_before_output, False)
        needs.true(lm.source != "encoder", "the lm target must read the decoder")
    others = [t.type for t in cfg.targets if t.type != "lm"]
    needs.true(not others, f"{model} has no place for targets {others}")


class BartFamily(HFFamily):
    model_types = ("bart",)
    architectures = {
        "BartForConditionalGeneration": "encoder-decoder with the LM head",
        "BartModel": "encoder-decoder without a head",
    }
    base_architecture = "BartModel"

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        self.check_architecture(architecture)
        c = hf_config
        act = activation_from_hf(c.activation_function, "activation_function")
        embedding = dict(parts=["word", "pos"], vocab_size=c.vocab_size, emb_size=c.d_model,
                         max_seq_length=c.max_position_embeddings, position_offset=2,
                         scale_embedding=bool(c.scale_embedding), norm="layernorm", norm_eps=LAYER_NORM_EPS,
                         dropout=c.dropout, pad_id=c.pad_token_id if c.pad_token_id is not None else 1)
        data = dict(
            embedding=embedding,
            encoder=fairseq_stack(c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim, c.d_model, act,
                                  "post", "fully_visible", c.dropout, c.attention_dropout),
            tgt_embedding=dict(embedding),
            decoder=fairseq_stack(c.decoder_layers, c.decoder_attention_heads, c.decoder_ffn_dim, c.d_model, act,
                                  "post", "causal", c.dropout, c.attention_dropout),
            share_embedding=True, init_std=c.init_std,
            targets=[dict(type="lm", transform=False, output_bias=True,
                          tie_weights=bool(getattr(c, "tie_word_embeddings", True)), source="decoder")],
        )
        return build(ModelConfig, data, Source(f"HF {architecture} config"), "model")

    def architecture_for(self, cfg: ModelConfig) -> str:
        return "BartForConditionalGeneration" if lm_target(cfg) is not None else "BartModel"

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import BartConfig

        needs = Needs("BART")
        enc, dec, emb, tgt = cfg.encoder, cfg.decoder, cfg.embedding, cfg.tgt_embedding
        if dec is None or tgt is None:
            needs.true(False, "BART needs a decoder")
            needs.check()
        d_model = enc.hidden_size
        for name, e in (("embedding", emb), ("tgt_embedding", tgt)):
            needs.equal(f"{name}.parts", e.parts, ["word", "pos"])
            needs.equal(f"{name}.position_offset", e.position_offset, 2)
            needs.equal(f"{name}.norm", e.norm, "layernorm")
            needs.equal(f"{name}.norm_eps", e.norm_eps, LAYER_NORM_EPS)
            needs.equal(f"{name}.emb_size", e.emb_size, d_model)
            needs.equal(f"{name}.max_seq_length", e.max_seq_length, emb.max_seq_length)
            needs.equal(f"{name}.scale_embedding", e.scale_embedding, emb.scale_embedding)
        needs.equal("share_embedding", cfg.share_embedding, True)
        needs.true(enc.act in OUR_ACTIVATIONS, f"encoder.act {enc.act!r} has no HF name")
        check_fairseq_stack(needs, "encoder", enc, d_model, "post", "fully_visible", enc.act)
        check_fairseq_stack(needs, "decoder", dec, d_model, "post", "causal", enc.act)
        check_lm(needs, cfg, "BART", output_bias=True)
        needs.check()
        lm = lm_target(cfg)
        return BartConfig(
            vocab_size=emb.vocab_size, d_model=d_model, max_position_embeddings=emb.max_seq_length,
            encoder_layers=enc.layers_num, encoder_attention_heads=enc.heads_num, encoder_ffn_dim=enc.feedforward_size,
            decoder_layers=dec.layers_num, decoder_attention_heads=dec.heads_num, decoder_ffn_dim=dec.feedforward_size,
            activation_function=OUR_ACTIVATIONS[enc.act], dropout=enc.dropout,
            attention_dropout=enc.attention_dropout if enc.attention_dropout is not None else enc.dropout,
            scale_embedding=emb.scale_embedding, pad_token_id=emb.pad_id, init_std=cfg.init_std,
            tie_word_embeddings=lm.tie_weights if lm is not None else True,
        )

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        p = "model."
        rules = [
            Rule(p + "shared.weight", "embedding.parts.word.weight"),
            Rule(p + "encoder.embed_positions.weight", "embedding.parts.pos.weight"),
            *renames(wb("layernorm_embedding", "norm"), p + "encoder.", "embedding."),
            Rule(p + "decoder.embed_positions.weight", "tgt_embedding.parts.pos.weight"),
            *renames(wb("layernorm_embedding", "norm"), p + "decoder.", "tgt_embedding."),
            *layer_rules(p),
        ]
        aliases = {p + "encoder.embed_tokens.weight": p + "shared.weight",
                   p + "decoder.embed_tokens.weight": p + "shared.weight"}
        lm = lm_target(cfg)
        if lm is not None:
            # Optional: BartModel has no head, and older checkpoints lack the (zero) final_logits_bias.
            head = f"targets.{lm.label}.head.output."
            rules.append(Rule("final_logits_bias", head + "bias", RESHAPE, optional=True))
            if lm.tie_weights:
                aliases["lm_head.weight"] = p + "shared.weight"
            else:
                rules.append(Rule("lm_head.weight", head + "weight", optional=True))
        return Mapping(rules, counts={"i": cfg.encoder.layers_num, "j": cfg.decoder.layers_num},
                       hf_aliases=aliases)


register_family(BartFamily())
