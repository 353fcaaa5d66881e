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

from modaloom.errors import ConfigError
from modaloom.interop.hf.bart import (
    FAIRSEQ_EXPORT_IGNORE,
    fairseq_options,
    fairseq_stacks,
    layer_rules,
    lm_target,
)
from modaloom.interop.hf.family import (
    HFFamily,
    activation_from_hf,
    build_config,
    first_target,
    register_family,
)
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
    # the speech embedding reads features, not ids: its pad_id is unused (the words' is tgt_embedding.pad_id)
    export_ignore = (*FAIRSEQ_EXPORT_IGNORE, "embedding.pad_id")

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
        data = dict(embedding=speech, tgt_embedding=words, **fairseq_stacks(c, act, "pre"), init_std=c.init_std,
                    targets=[lm_target(c, output_bias=False)])
        return build_config(data, architecture)

    def architecture_for(self, cfg: ModelConfig) -> str:
        return ("Speech2TextForConditionalGeneration" if first_target(cfg, "lm") is not None
                else "Speech2TextModel")

    def hf_config(self, cfg: ModelConfig, architecture: str) -> Any:
        from transformers import Speech2TextConfig

        emb = cfg.embedding
        tgt = cfg.tgt_embedding or emb  # a missing decoder side is refused by the round trip
        return Speech2TextConfig(
            **fairseq_options(cfg), vocab_size=tgt.vocab_size, pad_token_id=1,
            max_source_positions=emb.max_seq_length, max_target_positions=tgt.max_seq_length,
            num_conv_layers=len(emb.conv_kernel_sizes), conv_kernel_sizes=list(emb.conv_kernel_sizes),
            conv_channels=emb.conv_channels[0] if emb.conv_channels else 2 * cfg.encoder.hidden_size,
            input_feat_per_channel=emb.audio_feature_size, input_channels=1,
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
        lm = first_target(cfg, "lm")
        if lm is not None:
            if lm.tie_weights:
                aliases["lm_head.weight"] = p + "decoder.embed_tokens.weight"
            else:  # optional: Speech2TextModel has no head
                rules.append(Rule("lm_head.weight", f"targets.{lm.label}.head.output.weight", optional=True))
        counts = {"i": cfg.encoder.layers_num, "j": cfg.decoder.layers_num,
                  "k": len(cfg.embedding.conv_kernel_sizes)}
        return Mapping(rules, counts=counts, hf_aliases=aliases)


register_family(Speech2TextFamily())
