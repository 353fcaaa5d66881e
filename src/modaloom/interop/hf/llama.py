"""LLaMA: token embedding only, pre-RMSNorm causal stack with rotary positions (rotate-half layout, as our
``Rotary``), gated SiLU feed-forward, grouped-query attention, no biases by default, tied or untied head.
"""

from __future__ import annotations

from typing import Any

from modaloom.errors import ConfigError
from modaloom.interop.hf.bert import pick_architecture
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    attention_dropout,
    build_config,
    hf_activation,
    hf_option,
    register_family,
)
from modaloom.interop.hf.gpt2 import causal_lm_mapping, lm_target, lm_tied
from modaloom.interop.hf.mapping import Mapping, Rule, renames, wb
from modaloom.model_config import ModelConfig

LLAMA_NORMS = [("input_layernorm.weight", "self_attn_norm.weight"),
               ("post_attention_layernorm.weight", "feed_forward_norm.weight")]
LLAMA_ATTENTION = [("self_attn.q_proj", "self_attn.query"), ("self_attn.k_proj", "self_attn.key"),
                   ("self_attn.v_proj", "self_attn.value"), ("self_attn.o_proj", "self_attn.output")]
LLAMA_MLP = [("mlp.gate_proj", "feed_forward.linear_gate"), ("mlp.up_proj", "feed_forward.linear_in"),
             ("mlp.down_proj", "feed_forward.linear_out")]
LLAMA_IGNORE = (r".*rotary_emb\.inv_freq",)  # a buffer older checkpoints stored


def layer_rules(bias: bool) -> list[Rule]:
    pairs = list(LLAMA_NORMS)
    for hf, ours in LLAMA_ATTENTION + LLAMA_MLP:
        pairs += wb(hf, ours, bias)
    return [
        Rule("model.embed_tokens.weight", "embedding.parts.word.weight"),
        *renames(pairs, "model.layers.{i}.", "encoder.stack.layers.{i}."),
        Rule("model.norm.weight", "encoder.stack.final_norm.weight"),
    ]


def rope_theta(c: Any) -> float:
    params = hf_option(c, "rope_parameters", None) or hf_option(c, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ConfigError(f"HF rotary scaling {kind!r} is not supported (modaloom reproduces rope_type='default')")
    return float(params.get("rope_theta", hf_option(c, "rope_theta", 10000.0)))


class LlamaFamily(HFFamily):
    model_types = ("llama",)
    architectures = {"LlamaForCausalLM": "lm head (tied or not)",
                     "LlamaModel": "no head (lm target; randomly initialised unless tied)"}
    base_architecture = "LlamaModel"

    # LLaMA has no dropout outside attention.
    export_ignore = ("embedding.dropout", "encoder.dropout")

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        bias = bool(hf_option(c, "attention_bias", False))
        if bool(hf_option(c, "mlp_bias", False)) != bias:
            raise ConfigError("HF attention_bias and mlp_bias differ; modaloom has one encoder.bias for both")
        head_dim = hf_option(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        embedding = dict(parts=["word"], vocab_size=c.vocab_size, emb_size=c.hidden_size,
                         max_seq_length=c.max_position_embeddings,
                         pad_id=c.pad_token_id if c.pad_token_id is not None else 0, norm="none", dropout=0.0)
        encoder = dict(
            type="transformer", hidden_size=c.hidden_size, layers_num=c.num_hidden_layers,
            heads_num=c.num_attention_heads,
            head_size=head_dim if head_dim * c.num_attention_heads != c.hidden_size else 0,
            kv_heads_num=c.num_key_value_heads or c.num_attention_heads, feedforward_size=c.intermediate_size,
            act=activation_from_hf(c.hidden_act, "hidden_act"), feed_forward="gated", norm="rms",
            norm_eps=c.rms_norm_eps, norm_position="pre", final_norm=True, mask="causal", position="rotary",
            rotary_base=rope_theta(c), bias=bias, dropout=0.0, attention_dropout=float(c.attention_dropout or 0.0),
        )
        tied = bool(hf_option(c, "tie_word_embeddings", False))
        return build_config(dict(embedding=embedding, encoder=encoder, targets=[lm_target(tied)],
                                 init_std=c.initializer_range), architecture)

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import LlamaConfig

        emb, enc = cfg.embedding, cfg.encoder
        return LlamaConfig(
            vocab_size=emb.vocab_size, hidden_size=enc.hidden_size, intermediate_size=enc.feedforward_size,
            num_hidden_layers=enc.layers_num, num_attention_heads=enc.heads_num,
            num_key_value_heads=enc.kv_heads_num or enc.heads_num, head_dim=enc.head_dim,
            hidden_act=hf_activation(enc.act), max_position_embeddings=emb.max_seq_length,
            rms_norm_eps=enc.norm_eps, tie_word_embeddings=lm_tied(cfg), attention_bias=enc.bias,
            mlp_bias=enc.bias, rope_parameters={"rope_type": "default", "rope_theta": enc.rotary_base},
            attention_dropout=attention_dropout(enc), initializer_range=cfg.init_std, pad_token_id=emb.pad_id,
        )

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, {("lm",): "LlamaForCausalLM"}, "LLaMA")

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        return causal_lm_mapping(cfg, layer_rules(cfg.encoder.bias), "model.embed_tokens.weight",
                                 architecture == self.base_architecture, LLAMA_IGNORE)


register_family(LlamaFamily())
