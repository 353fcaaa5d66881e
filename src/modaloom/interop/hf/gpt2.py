"""GPT-2: learned positions, pre-norm causal stack with a final norm (``ln_f``), tied LM head.

HF stores GPT-2's projections as Conv1D, i.e. (in, out): they are transposed, and the fused ``c_attn``
(hidden, 3 * hidden) is split into our query, key and value. ``gelu_new`` is our ``gelu_new`` (tanh form).
"""

from __future__ import annotations

from typing import Any

from modaloom.interop.hf.bert import optional, pick_architecture, target_labels
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    attention_dropout,
    build_config,
    hf_activation,
    hf_option,
    refuse,
    register_family,
)
from modaloom.interop.hf.mapping import TRANSPOSE, Mapping, Rule, Split, renames, wb
from modaloom.model_config import ModelConfig

L = "encoder.stack.layers.{i}."
QKV = tuple(f"{L}self_attn.{p}" for p in ("query", "key", "value"))
GPT2_RULES = [
    Rule("transformer.wte.weight", "embedding.parts.word.weight"),
    Rule("transformer.wpe.weight", "embedding.parts.pos.weight"),
    *renames(wb("ln_1", "self_attn_norm") + wb("ln_2", "feed_forward_norm"), "transformer.h.{i}.", L),
    Rule("transformer.h.{i}.attn.c_attn.weight", tuple(f"{k}.weight" for k in QKV), Split(dim=0, transpose=True)),
    Rule("transformer.h.{i}.attn.c_attn.bias", tuple(f"{k}.bias" for k in QKV), Split(dim=0)),
    Rule("transformer.h.{i}.attn.c_proj.weight", f"{L}self_attn.output.weight", TRANSPOSE),
    Rule("transformer.h.{i}.attn.c_proj.bias", f"{L}self_attn.output.bias"),
    Rule("transformer.h.{i}.mlp.c_fc.weight", f"{L}feed_forward.linear_in.weight", TRANSPOSE),
    Rule("transformer.h.{i}.mlp.c_fc.bias", f"{L}feed_forward.linear_in.bias"),
    Rule("transformer.h.{i}.mlp.c_proj.weight", f"{L}feed_forward.linear_out.weight", TRANSPOSE),
    Rule("transformer.h.{i}.mlp.c_proj.bias", f"{L}feed_forward.linear_out.bias"),
    *renames(wb("transformer.ln_f", "encoder.stack.final_norm")),
]
GPT2_IGNORE = (r"transformer\.h\.\d+\.attn\.(masked_)?bias",)  # causal-mask buffers of old checkpoints


def lm_target(tied: bool) -> dict[str, Any]:
    return dict(type="lm", transform=False, tie_weights=tied, output_bias=False)


def lm_tied(cfg: ModelConfig) -> bool:
    return all(t.tie_weights for t in cfg.targets if t.type == "lm")


def causal_lm_mapping(cfg: ModelConfig, rules: list[Rule], word_embeddings: str, headless: bool,
                      hf_ignore: tuple[str, ...]) -> Mapping:
    """A decoder-only LM: ``rules`` plus its ``lm_head``, an alias of ``word_embeddings`` when tied, else
    weights of its own (optional in the headless class)."""
    aliases = {}
    if lm_tied(cfg):
        aliases["lm_head.weight"] = word_embeddings
    else:
        head = [Rule("lm_head.weight", "targets.{lm}.head.output.weight")]
        rules = rules + (optional(head) if headless else head)
    return Mapping(rules, counts={"i": cfg.encoder.layers_num}, names=target_labels(cfg), hf_ignore=hf_ignore,
                   hf_aliases=aliases)


class GPT2Family(HFFamily):
    model_types = ("gpt2",)
    architectures = {"GPT2LMHeadModel": "tied lm head", "GPT2Model": "no head (lm target, tied)"}
    base_architecture = "GPT2Model"

    def to_modaloom_config(self, c: Any, architecture: str) -> ModelConfig:
        refuse(c, "scale_attn_by_inverse_layer_idx", False, False)
        refuse(c, "add_cross_attention", False, False)
        act = activation_from_hf(c.activation_function, "activation_function")
        embedding = dict(parts=["word", "pos"], vocab_size=c.vocab_size, emb_size=c.n_embd,
                         max_seq_length=c.n_positions, pad_id=c.pad_token_id if c.pad_token_id is not None else 0,
                         norm="none", dropout=c.embd_pdrop)
        encoder = dict(
            type="transformer", hidden_size=c.n_embd, layers_num=c.n_layer, heads_num=c.n_head,
            feedforward_size=c.n_inner or 4 * c.n_embd, act=act, norm="layernorm", norm_eps=c.layer_norm_epsilon,
            norm_position="pre", final_norm=True, mask="causal", dropout=c.resid_pdrop,
            attention_dropout=c.attn_pdrop, attention_scale=bool(hf_option(c, "scale_attn_weights", True)),
        )
        tied = bool(hf_option(c, "tie_word_embeddings", True))
        return build_config(dict(embedding=embedding, encoder=encoder, targets=[lm_target(tied)],
                                 init_std=c.initializer_range), architecture)

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import GPT2Config

        emb, enc = cfg.embedding, cfg.encoder
        return GPT2Config(
            vocab_size=emb.vocab_size, n_positions=emb.max_seq_length, n_embd=enc.hidden_size,
            n_layer=enc.layers_num, n_head=enc.heads_num, n_inner=enc.feedforward_size,
            activation_function=hf_activation(enc.act), resid_pdrop=enc.dropout, embd_pdrop=emb.dropout,
            attn_pdrop=attention_dropout(enc), layer_norm_epsilon=enc.norm_eps,
            scale_attn_weights=enc.attention_scale, initializer_range=cfg.init_std, tie_word_embeddings=lm_tied(cfg),
            pad_token_id=emb.pad_id, bos_token_id=emb.vocab_size - 1,
            eos_token_id=emb.vocab_size - 1,  # GPT-2's <|endoftext|> is last
        )

    def architecture_for(self, cfg: ModelConfig) -> str:
        return pick_architecture(cfg, {("lm",): "GPT2LMHeadModel"}, "GPT-2")

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        return causal_lm_mapping(cfg, GPT2_RULES, "transformer.wte.weight", architecture == self.base_architecture,
                                 GPT2_IGNORE)


register_family(GPT2Family())
