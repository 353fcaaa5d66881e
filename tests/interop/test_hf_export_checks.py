"""Export checks derived by a round trip: what an HF family cannot hold is refused, naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from modaloom.config import load_model_config  # noqa: E402
from modaloom.config_schema import Source, build, set_dotted, to_dict  # noqa: E402
from modaloom.errors import ConfigError  # noqa: E402
from modaloom.interop.hf import get_family, hf_to_modaloom, modaloom_to_hf  # noqa: E402
from modaloom.interop.hf.roundtrip import check_round_trip, differences, written_out  # noqa: E402
from modaloom.model_config import ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=40)
FAIRSEQ = dict(vocab_size=97, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=40,
               decoder_ffn_dim=40, encoder_attention_heads=4, decoder_attention_heads=4)


def hf_configs():
    """model_type -> (HF architecture, a tiny HF config of that family)."""
    return {
        "bert": ("BertForMaskedLM", transformers.BertConfig(vocab_size=99, **TINY)),
        "roberta": ("RobertaForMaskedLM", transformers.RobertaConfig(vocab_size=99, pad_token_id=1, **TINY)),
        "albert": ("AlbertForMaskedLM", transformers.AlbertConfig(vocab_size=99, embedding_size=16, **TINY)),
        "gpt2": ("GPT2LMHeadModel", transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4)),
        "llama": ("LlamaForCausalLM", transformers.LlamaConfig(vocab_size=99, num_key_value_heads=2, **TINY)),
        "t5": ("T5ForConditionalGeneration", transformers.T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=40,
                                                                   num_layers=1, num_heads=4)),
        "bart": ("BartForConditionalGeneration", transformers.BartConfig(**FAIRSEQ)),
        "speech_to_text": ("Speech2TextForConditionalGeneration", transformers.Speech2TextConfig(
            **FAIRSEQ, conv_channels=24, conv_kernel_sizes=[5, 3], input_feat_per_channel=10, input_channels=1)),
        "vit": ("ViTForImageClassification", transformers.ViTConfig(image_size=32, patch_size=8, **TINY)),
        "clip": ("CLIPModel", transformers.CLIPConfig(
            text_config=dict(vocab_size=99, max_position_embeddings=16, eos_token_id=2, **TINY),
            vision_config=dict(image_size=32, patch_size=8, **TINY), projection_dim=24)),
    }


# model_type -> (dotted key, a value the family cannot hold, the refusal expected)
CANNOT_HOLD = {
    "bert": ("encoder.norm_position", "pre", "model.encoder.norm_position is 'pre' but bert only has 'post'"),
    "roberta": ("embedding.position_offset", 0, "model.embedding.position_offset is 0 but roberta only has 2"),
    "albert": ("targets.0.tie_weights", False, "model.targets.0.tie_weights is False but albert only has True"),
    "gpt2": ("encoder.mask", "fully_visible", "model.encoder.mask is 'fully_visible' but gpt2 only has 'causal'"),
    "llama": ("encoder.norm", "layernorm", "model.encoder.norm is 'layernorm' but llama only has 'rms'"),
    "t5": ("decoder.norm_eps", 1e-5, "model.decoder.norm_eps is 1e-05 but t5 only has 1e-06"),
    "bart": ("tgt_embedding.norm_eps", 1e-6, "model.tgt_embedding.norm_eps is 1e-06 but bart only has 1e-05"),
    "speech_to_text": ("tgt_embedding.pad_id", 0,
                       "model.tgt_embedding.pad_id is 0 but speech_to_text only has 1"),
    "vit": ("embedding.image_width", 16, "model.embedding.image_width is 16 but vit only has 32"),
    # HF reads eos_token_id 2 as the legacy largest-id rule: pooling at the first id 2 has no HF form
    "clip": ("targets.0.eos_id", 2, "model.targets.0.eos_id is 2 but clip only has None"),
}


def imported(model_type: str) -> tuple[ModelConfig, str]:
    architecture, hf_config = hf_configs()[model_type]
    return get_family(model_type).to_modaloom_config(hf_config, architecture), architecture


def changed(cfg: ModelConfig, values: dict) -> ModelConfig:
    """The config with fields changed (dotted key -> value), through the dict layout."""
    data = to_dict(cfg)
    for key, value in values.items():
        set_dotted(data, key, value)
    return build(ModelConfig, data, Source(), "model")


@pytest.mark.parametrize("model_type", sorted(CANNOT_HOLD))
def test_imported_config_round_trips_and_a_field_the_family_cannot_hold_is_named(model_type):
    cfg, architecture = imported(model_type)
    family = get_family(model_type)
    family.to_hf_config(cfg, architecture)  # what came from HF goes back
    key, value, message = CANNOT_HOLD[model_type]
    with pytest.raises(ConfigError) as info:
        family.to_hf_config(changed(cfg, {key: value}), architecture)
    assert str(info.value).startswith(f"cannot export to HF {model_type}: ")
    assert message in str(info.value)


def test_every_field_that_does_not_survive_is_named_through_modaloom_to_hf():
    model = hf_to_modaloom(transformers.BertForMaskedLM(hf_configs()["bert"][1]))
    model.config.encoder.norm_position = "pre"
    model.config.targets[0].transform = False
    with pytest.raises(ConfigError) as info:
        modaloom_to_hf(model, "/nonexistent/never-written", model_type="bert")
    text = str(info.value)
    assert text.startswith("cannot export to HF bert: ")
    for part in ("model.encoder.norm_position is 'pre' but bert only has 'post'",
                 "model.encoder.final_norm is True but bert only has False",  # pre-norm's default
                 "model.targets.0.transform is False but bert only has True"):
        assert part in text


def test_a_missing_decoder_and_missing_towers_are_named():
    gpt2, _ = imported("gpt2")
    with pytest.raises(ConfigError, match=r"model\.decoder is not set but t5 always has one"):
        get_family("t5").to_hf_config(gpt2, "T5ForConditionalGeneration")
    with pytest.raises(ConfigError, match=r"clip: it needs option 'streams', which the model's embedding parts \[word, pos\] does not have"):
        get_family("clip").to_hf_config(gpt2, "CLIPModel")


def test_derived_defaults_and_same_computations_compare_equal():
    cfg, _ = imported("llama")
    data = to_dict(cfg)
    data["encoder"].update(final_norm=None, head_size=0, attention_dropout=None, act="swish")
    data["targets"][0].update(vocab_size=cfg.embedding.vocab_size, source="auto")
    same = build(ModelConfig, data, Source(), "model")
    assert differences(written_out(same), written_out(cfg), ()) == []
    check_round_trip("llama", same, cfg)


def test_ignore_patterns_skip_fields_and_common_knobs_are_ignored():
    cfg, _ = imported("bert")
    other = changed(cfg, {"targets.0.weight": 0.5, "embedding.dropout": 0.3})
    assert [path for path, _, _ in differences(written_out(other), written_out(cfg), ())] == [
        "embedding.dropout", "targets.0.weight"]
    check_round_trip("bert", other, cfg, ignore=("embedding.dropout",))  # targets.*.weight: COMMON_IGNORE


ZOO_FAMILIES = {"albert": "albert", "bart": "bart", "bert": "bert", "clip": "clip", "gpt2": "gpt2",
                "llama": "llama", "roberta": "roberta", "s2t": "speech_to_text", "t5": "t5", "t5-v1_1": "t5",
                "vit": "vit", "xlm-roberta": "xlm-roberta"}


@pytest.mark.parametrize("folder", sorted(ZOO_FAMILIES))
def test_zoo_configs_export_to_their_family(folder):
    family = get_family(ZOO_FAMILIES[folder])
    paths = sorted((ROOT / "configs" / folder).glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_model_config(path)
        hf = family.to_hf_config(cfg, family.architecture_for(cfg))
        assert hf.model_type == ZOO_FAMILIES[folder], path


def test_hf_config_refused_by_transformers_is_a_config_error():
    cfg, architecture = imported("llama")
    odd = changed(cfg, {"encoder.hidden_size": 34, "embedding.emb_size": 34, "encoder.head_size": 8})
    with pytest.raises(ConfigError, match=re.escape("cannot export to HF llama: transformers refuses")):
        get_family("llama").to_hf_config(odd, architecture)
