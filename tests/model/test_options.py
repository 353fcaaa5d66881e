"""Options beside each part: section classes composed from the selected parts, checked key by key."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modaloom import registry
from modaloom.config_schema import build, to_dict
from modaloom.decoders.transformer import TransformerDecoder
from modaloom.errors import ConfigError
from modaloom.model import build_model, load
from modaloom.model_config import (
    CONFIG_FORMAT,
    EmbeddingConfig,
    EncoderConfig,
    ModelConfig,
    TargetConfig,
    model_section_from_saved,
)

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_models"

BERT = {
    "embedding": {"parts": ["word", "pos", "seg"], "vocab_size": 40, "emb_size": 16, "max_seq_length": 16},
    "encoder": {"hidden_size": 16, "layers_num": 1, "heads_num": 2, "feedforward_size": 24},
    "targets": [{"type": "mlm"}],
}


def model_cfg(**changes) -> dict:
    cfg = copy.deepcopy(BERT)
    for section, values in changes.items():
        if isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return cfg


def test_section_class_is_composed_from_the_selected_parts():
    enc = EncoderConfig(type="gatedcnn", hidden_size=8, kernel_size=3)
    assert isinstance(enc, EncoderConfig) and enc.kernel_size == 3
    assert not hasattr(enc, "heads_num")
    assert EncoderConfig().heads_num == 12  # the default type is the transformer
    emb = EmbeddingConfig(parts=["patch", "pos"], patch_size=8)
    assert emb.num_patches == (224 // 8) ** 2 and not hasattr(emb, "vocab_size")
    clr = TargetConfig(type="clr", feature_size=8, gather=False)
    assert clr.loss == "infonce" and clr.gather is False and not hasattr(clr, "label_smoothing")


def test_unknown_key_names_the_parts_valid_keys_and_the_nearest():
    with pytest.raises(ConfigError) as err:
        build(ModelConfig, model_cfg(encoder={"heads_nm": 2}), path="model")
    message = str(err.value)
    assert "model.encoder.heads_nm" in message and "for encoder type 'transformer'" in message
    assert "did you mean 'heads_num'" in message and "feedforward_size" in message
    with pytest.raises(ConfigError, match=r"unknown key 'heads_num' for encoder type 'lstm'.*; valid keys: dropout, "
                                          r"hidden_size, layers_num, type"):
        build(ModelConfig, model_cfg(encoder={"type": "lstm", "hidden_size": 16, "heads_num": 2}), path="model")
    with pytest.raises(ConfigError, match=r"unknown key 'patch_size' for embedding parts \[word, pos, seg\]"):
        build(ModelConfig, model_cfg(embedding={"patch_size": 16}), path="model")


def test_loss_options_join_their_target_and_bad_names_list_the_choices():
    cfg = build(ModelConfig, model_cfg(targets=[{"type": "mlm", "label_smoothing": 0.1}]), path="model")
    assert cfg.targets[0].label_smoothing == 0.1
    with pytest.raises(ConfigError, match=r"unknown loss 'focal'.*valid choices: .*cross_entropy.*infonce"):
        build(ModelConfig, model_cfg(targets=[{"type": "mlm", "loss": "focal"}]), path="model")
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        build(ModelConfig, model_cfg(targets=[{"type": "cls", "label_smoothing": 1.5}]), path="model")


def test_composed_configs_copy_and_pickle():
    cfg = build(ModelConfig, model_cfg(), path="model")
    for clone in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert type(clone.encoder) is type(cfg.encoder)
        assert to_dict(clone) == to_dict(cfg)


def test_saved_config_holds_only_the_selected_parts_keys(tmp_path):
    model = build_model(model_cfg())
    model.save(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["format"] == CONFIG_FORMAT
    assert "patch_size" not in data["model"]["embedding"] and "feature_size" not in data["model"]["targets"][0]
    again = load(tmp_path / "m")
    assert to_dict(again.config) == to_dict(model.config)


@pytest.mark.parametrize("name", ["bert", "clip", "t5"])
def test_model_folders_saved_before_options_moved_load_with_the_same_numbers(name):
    data = json.loads((LEGACY / name / "config.json").read_text())
    assert "format" not in data and "audio_feature_size" in json.dumps(data)  # the old flat layout
    model = load(LEGACY / name).eval()
    expected = load_file(str(LEGACY / f"{name}.expected.safetensors"))
    batch = {k.removeprefix("batch."): v for k, v in expected.items() if k.startswith("batch.")}
    with torch.no_grad():
        out = model(batch)
    logits = {k.removeprefix("logits."): v for k, v in expected.items() if k.startswith("logits.")}
    assert sorted(out.logits) == sorted(logits)
    for key, value in logits.items():
        assert torch.equal(out.logits[key], value), key


@registry.register("decoder", "test_scaled_decoder")
class ScaledDecoder(TransformerDecoder):
    """A decoder registered from a test file: the transformer decoder with its output halved."""

    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs) * 0.5


def test_the_decoder_registry_is_honoured():
    section = model_section_from_saved(json.loads((LEGACY / "t5" / "config.json").read_text()))
    plain = build_model(section)
    scaled = build_model(section | {"decoder": {**section["decoder"], "type": "test_scaled_decoder"}})
    assert isinstance(scaled.decoder, ScaledDecoder) and type(plain.decoder) is TransformerDecoder
    with pytest.raises(ConfigError, match="unknown decoder 'lstm'"):
        build_model(section | {"decoder": {"type": "lstm"}})
