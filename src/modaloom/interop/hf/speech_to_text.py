"""Speech2Text (``model_type: speech_to_text``): conv subsampler, pre-norm encoder-decoder, sinusoidal positions.

Layout facts the table encodes:
- ``model.encoder.conv.conv_layers.{k}``: stride-2 Conv1d + GLU (our ``speech`` embedding part), scaled by
  sqrt(d_model) when ``scale_embedding``;
- positions are fairseq sinusoids (not stored) starting at ``pad_token_id + 1``, our ``sinusoidal`` part
  with ``position_offset = pad_token_id + 1``; the encoder derives them from its padding mask with
  padding id 1, so only ``pad_token_id: 1`` (every released checkpoint) is accepted;
- layers carry BART's names but are pre-norm, each stack ends in ``layer_norm``;
- ``lm_head`` is tied to ``model.decoder.embed_tokens`` unless ``tie_word_embeddings`` is false.

The names of our speech embedding part are collected in ``SPEECH`` so that they are changed in one place.
"""

from __future__ import annotations

from typing import Any

from modaloom.config_schema import Source, build
from modaloom.errors import ConfigError
from modaloom.interop.hf.bart import check_fairseq_stack, check_lm, fairseq_stack, layer_rules, lm_target
from modaloom.interop.hf.family import OUR_ACTIVATIONS, HFFamily, Needs, activation_from_hf, register_family
from modaloom.interop.hf.mapping import Mapping, Rule, renames, wb
from modaloom.model_config import ModelConfig

# Our speech embedding part (see docs/parts.md): one Conv1d per kernel size.
SPEECH = {"conv": "embedding.parts.speech.convs.{k}"}


class Speech2TextFamily(HFFamily):
    model_types = ("speech_to_text",)
    architectures = {
        "Speech2TextForConditionalGeneration": "speech encoder-decoder with the LM head",
        "Speech2TextModel": "speech encoder-decoder without a head",
    }
    base_architecture = "Speech2TextModel"

    def to_modaloom_config(self, hf_config: Any, architecture: str) -> ModelConfig:
        self.check_architecture(architecture)
        c = hf_config
        if c.pad_token_id != 1:
            raise ConfigError(f"HF option pad_token_id={c.pad_token_id} is not supported for Speech2Text (needs 1)")
        if len(c.conv_kernel_sizes) != c.num_conv_layers:
            raise ConfigError("HF options conv_kernel_sizes and num_conv_layers disagree")
        act = activation_from_hf(c.activation_function, "activation_function")
        offset = c.pad_token_id + 1
        speech = dict(parts=["speech", "sinusoidal"], emb_size=c.d_model,
                      audio_feature_size=c.input_feat_per_channel * c.input_channels,
                      conv_channels=[c.conv_channels] * (c.num_conv_layers - 1),
                      conv_kernel_sizes=list(c.conv_kernel_sizes), scale_embedding=bool(c.scale_embedding),
                      max_seq_length=c.max_source_positions, position_offset=offset, norm="none", dropout=c.dropout)
        words = dict(parts=["word", "sinusoidal"], vocab_size=c.vocab_size, emb_size=c.d_model,
                     scale_embedding=bool(c.scale_embedding), max_seq_length=c.max_target_positions,
                     position_offset=offset, pad_id=c.pad_token_id, norm="none", dropout=c.dropout)
        data = dict(
            embedding=speech,
            encoder=fairseq_stack(c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim, c.d_model, act,
                                  "pre", "fully_visible", c.dropout, c.attention_dropout),
            tgt_embedding=words,
            decoder=fairseq_stack(c.decoder_layers, c.decoder_attention_heads, c.decoder_ffn_dim, c.d_model, act,
                                  "pre", "causal", c.dropout, c.attention_dropout),
            init_std=c.init_std,
            targets=[dict(type="lm", transform=False, output_bias=False,
                          tie_weights=bool(getattr(c, "tie_word_embeddings", True)), source="decoder")],
        )
        return build(ModelConfig, data, Source(f"HF {architecture} config"), "model")

    def architecture_for(self, cfg: ModelConfig) -> str:
        return "Speech2TextForConditionalGeneration" if lm_target(cfg) is not None else "Speech2TextModel"

    def to_hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import Speech2TextConfig

        needs = Needs("Speech2Text")
        enc, dec, emb, tgt = cfg.encoder, cfg.decoder, cfg.embedding, cfg.tgt_embedding
        if dec is None or tgt is None:
            needs.true(False, "Speech2Text needs a decoder")
            needs.check()
        d_model = enc.hidden_size
        needs.equal("embedding.parts", emb.parts, ["speech", "sinusoidal"])
        needs.equal("tgt_embedding.parts", tgt.parts, ["word", "sinusoidal"])
        needs.equal("tgt_embedding.pad_id", tgt.pad_id, 1)
        for name, e in (("embedding", emb), ("tgt_embedding", tgt)):
            needs.equal(f"{name}.position_offset", e.position_offset, 2)
            needs.equal(f"{name}.norm", e.norm, "none")
            needs.equal(f"{name}.emb_size", e.emb_size, d_model)
            needs.equal(f"{name}.scale_embedding", e.scale_embedding, emb.scale_embedding)
        needs.true(len(set(emb.conv_channels)) <= 1, "the conv layers must share one width (conv_channels)")
        needs.equal("len(conv_channels)", len(emb.conv_channels), len(emb.conv_kernel_sizes) - 1)
        needs.equal("share_embedding", cfg.share_embedding, False)
        needs.true(enc.act in OUR_ACTIVATIONS, f"encoder.act {enc.act!r} has no HF name")
        check_fairseq_stack(needs, "encoder", enc, d_model, "pre", "fully_visible", enc.act)
        check_fairseq_stack(needs, "decoder", dec, d_model, "pre", "causal", enc.act)
        check_lm(needs, cfg, "Speech2Text", output_bias=False)
        needs.check()
        lm = lm_target(cfg)
        return Speech2TextConfig(
            vocab_size=tgt.vocab_size, d_model=d_model, encoder_layers=enc.layers_num,
            encoder_attention_heads=enc.heads_num, encoder_ffn_dim=enc.feedforward_size,
            decoder_layers=dec.layers_num, decoder_attention_heads=dec.heads_num,
            decoder_ffn_dim=dec.feedforward_size, activation_function=OUR_ACTIVATIONS[enc.act],
            dropout=enc.dropout,
            attention_dropout=enc.attention_dropout if enc.attention_dropout is not None else enc.dropout,
            scale_embedding=emb.scale_embedding, pad_token_id=1, init_std=cfg.init_std,
            max_source_positions=emb.max_seq_length, max_target_positions=tgt.max_seq_length,
            num_conv_layers=len(emb.conv_kernel_sizes), conv_kernel_sizes=list(emb.conv_kernel_sizes),
            conv_channels=emb.conv_channels[0] if emb.conv_channels else d_model * 2,
            input_feat_per_channel=emb.audio_feature_size, input_channels=1,
            tie_word_embeddings=lm.tie_weights if lm is not None else True,
        )

    def mapping(self, cfg: ModelConfig, architecture: str) -> Mapping:
        p = "model."
        rules = [
            *renames(wb("encoder.conv.conv_layers.{k}", SPEECH["conv"]), p),
            *renames(wb("layer_norm", "encoder.stack.final_norm"), p + "encoder."),
            Rule(p + "decoder.embed_tokens.weight", "tgt_embedding.parts.word.weight"),
            *renames(wb("layer_norm", "decoder.stack.final_norm"), p + "decoder."),
            *layer_rules(p),
        ]
        aliases = {}
        lm = lm_target(cfg)
        if lm is not None:
            if lm.tie_weights:
                aliases["lm_head.weight"] = p + "decoder.embed_tokens.weight"
            else:  # optional: Speech2TextModel has no head
                rules.append(Rule("lm_head.weight", f"targets.{lm.label}.head.output.weight", optional=True))
        counts = {"i": cfg.encoder.layers_num, "j": cfg.decoder.layers_num,
                  "k": len(cfg.embedding.conv_kernel_sizes)}
        return Mapping(rules, counts=counts, hf_aliases=aliases)


register_family(Speech2TextFamily())
