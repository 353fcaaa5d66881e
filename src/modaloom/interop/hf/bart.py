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


# A fairseq-layout config has one dropout and one attention_dropout, carried by the encoder's.
FAIRSEQ_EXPORT_IGNORE = ("embedding.dropout", "tgt_embedding.dropout", "decoder.dropout",
                         "decoder.attention_dropout")


def fairseq_stacks(c: Any, act: str, norm_position: str) -> dict[str, dict[str, Any]]:
    """The encoder and decoder of a fairseq-layout HF config (BART, Speech2Text) in our dict layout."""
    def stack(layers: int, heads: int, ffn: int, mask: str) -> dict[str, Any]:
        return dict(type="transformer", hidden_size=c.d_model, layers_num=layers, heads_num=heads,
                    feedforward_size=ffn, act=act, norm="layernorm", norm_eps=LAYER_NORM_EPS,
                    norm_position=norm_position, final_norm=norm_position == "pre", mask=mask,
                    dropout=c.dropout, attention_dropout=c.attention_dropout)

    return dict(encoder=stack(c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim, "fully_visible"),
                decoder=stack(c.decoder_layers, c.decoder_attention_heads, c.decoder_ffn_dim, "causal"))


def fairseq_options(cfg: ModelConfig) -> dict[str, Any]:
    """The HF options BART and Speech2Text share, from our config (a missing decoder reads as the encoder,
    for the round trip to refuse)."""
    enc, emb = cfg.encoder, cfg.embedding
    dec = cfg.decoder or enc
    lm = first_target(cfg, "lm")
    return dict(
        d_model=enc.hidden_size, encoder_layers=enc.layers_num, encoder_attention_heads=enc.heads_num,
        encoder_ffn_dim=enc.feedforward_size, decoder_layers=dec.layers_num,
        decoder_attention_heads=dec.heads_num, decoder_ffn_dim=dec.feedforward_size,
        activation_function=hf_activation(enc.act), dropout=enc.dropout, attention_dropout=attention_dropout(enc),
        scale_embedding=emb.scale_embedding, init_std=cfg.init_std,
        tie_word_embeddings=lm.tie_weights if lm is not None else True,
    )


def lm_target(c: Any, output_bias: bool) -> dict[str, Any]:
    """The decoder's LM head of a fairseq-layout HF config, tied unless ``tie_word_embeddings`` is false."""
    return dict(type="lm", transform=False, output_bias=output_bias,
                tie_weights=bool(getattr(c, "tie_word_embeddings", True)), source="decoder")


class BartFamily(HFFamily):
    model_types = ("bart",)
    architectures = {
        "BartForConditionalGeneration": "encoder-decoder with the LM head",
        "BartModel": "encoder-decoder without a head",
    }
    base_architecture = "BartModel"

    export_ignore = FAIRSEQ_EXPORT_IGNORE

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        self.check_architecture(architecture)
        c = hf_config
        act = activation_from_hf(c.activation_function, "activation_function")
        embedding = dict(parts=["word", "pos"], vocab_size=c.vocab_size, emb_size=c.d_model,
                         max_seq_length=c.max_position_embeddings, position_offset=2,
                         scale_embedding=bool(c.scale_embedding), norm="layernorm", norm_eps=LAYER_NORM_EPS,
                         dropout=c.dropout, pad_id=c.pad_token_id if c.pad_token_id is not None else 1)
        data = dict(embedding=embedding, tgt_embedding=dict(embedding), **fairseq_stacks(c, act, "post"),
                    share_embedding=True, init_std=c.init_std, targets=[lm_target(c, output_bias=True)])
        return build_config(data, architecture)

    def architecture_for(self, cfg: ModelConfig) -> str:
        return "BartForConditionalGeneration" if first_target(cfg, "lm") is not None else "BartModel"

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import BartConfig

        emb = cfg.embedding
        return BartConfig(**fairseq_options(cfg), vocab_size=emb.vocab_size,
                          max_position_embeddings=emb.max_seq_length, pad_token_id=emb.pad_id)

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
        lm = first_target(cfg, "lm")
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
