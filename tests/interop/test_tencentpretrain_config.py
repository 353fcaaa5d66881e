"""TencentPretrain's flat JSON configs load through modaloom.config.load_config, or are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modaloom import registry
from modaloom.config import config_dict, load_config
from modaloom.errors import ConfigError
from modaloom.interop.tencentpretrain_config import IGNORED_KEYS, MAPPED_KEYS, translate
from modaloom.model import build_model

MODELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tencentpretrain" / "models"

# Files refused on purpose, and a word the one-line reason must contain.
REFUSED = {
    "dall-e/base_config.json": "VQGAN image tokenizer",
    "talk2face/base_config.json": "VQGAN image tokenizer",
    "sbert/base_config.json": "siamese",
    "sbert/large_config.json": "siamese",
    "rnn/siamese_lstm_config.json": "siamese",
    # DeepSpeed engine settings, not model configs: the nested schema refuses their first key.
    "deepspeed_config.json": "DeepSpeed engine config",
    "deepspeed_mp_config.json": "DeepSpeed engine config",
    "deepspeed_zero3_config.json": "DeepSpeed engine config",
}


def tp_files() -> list[Path]:
    if not MODELS.is_dir():
        return []
    return sorted(set(MODELS.rglob("*_config.json")) | set((MODELS / "gpt2").glob("*.json")))


def rel(path: Path) -> str:
    return path.relative_to(MODELS).as_posix()


needs_shared = pytest.mark.skipif(not MODELS.is_dir(), reason="TencentPretrain configs not available under ../shared")


def part_names(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every registered part a nested model section needs."""
    out = []
    for section, kind in (("embedding", "embedding"), ("tgt_embedding", "embedding")):
        emb = model.get(section)
        if emb:
            out += [(kind, p) for p in emb["parts"]]
            for stream in emb.get("streams", []):
                out += [(kind, p) for p in stream["parts"]]
    out.append(("encoder", model["encoder"]["type"]))
    out += [("encoder", s["type"]) for s in model["encoder"].get("streams", [])]
    out += [("target", t["type"]) for t in model["targets"]]
    return out


def with_vocab(model: dict[str, Any], vocab: int = 1000) -> dict[str, Any]:
    """TencentPretrain configs take the vocabulary size from the vocab file; give one to build."""
    for section in ("embedding", "tgt_embedding"):
        emb = model.get(section)
        if not emb:
            continue
        for sub in [emb, *emb.get("streams", [])]:
            if {"word", "word_patch"} & set(sub["parts"]):
                sub.setdefault("vocab_size", vocab)
    return model


@needs_shared
def test_all_configs_found():
    assert len(tp_files()) >= 60


@needs_shared
@pytest.mark.parametrize("path", tp_files(), ids=rel)
def test_config_loads_or_is_refused(path: Path):
    name = rel(path)
    if name in REFUSED:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        message = str(info.value)
        assert "\n" not in message and REFUSED[name] in message
        return
    cfg = load_config(path)
    assert cfg.model.targets
    model = json.loads(json.dumps(config_dict(path)[0]["model"]))
    missing = [(kind, n) for kind, n in part_names(model) if n not in registry.names(kind)]
    if missing:
        # Parts still being written elsewhere: building names the unknown part.
        with pytest.raises(ConfigError, match="unknown"), torch.device("meta"):
            build_model(with_vocab(model))
        return
    with torch.device("meta"):
        built = build_model(with_vocab(model))
    assert built.num_parameters() > 0


@needs_shared
def test_bert_tiny_translation():
    cfg = load_config(MODELS / "bert" / "tiny_config.json")
    m = cfg.model
    assert m.embedding.parts == ["word", "pos", "seg"] and m.embedding.type_vocab_size == 3
    assert m.embedding.norm == "layernorm" and m.embedding.norm_eps == 1e-6
    assert (m.encoder.hidden_size, m.encoder.layers_num, m.encoder.heads_num, m.encoder.feedforward_size) == \
        (128, 2, 2, 512)
    assert m.encoder.norm_position == "post" and m.encoder.mask == "fully_visible"
    assert [t.type for t in m.targets] == ["mlm", "sp"] and m.targets[0].tie_weights
    assert cfg.data.processor == "bert"


@needs_shared
def test_llama_t5_albert_s2t_clip_translations():
    llama = load_config(MODELS / "llama2" / "70b_config.json").model.encoder
    assert (llama.norm, llama.position, llama.feed_forward, llama.bias, llama.mask) == \
        ("rms", "rotary", "gated", False, "causal")
    assert llama.kv_heads_num == 8 and llama.act == "silu" and llama.norm_position == "pre"
    t5 = load_config(MODELS / "t5-v1_1" / "small_config.json").model
    assert t5.encoder.position == "relative" and not t5.encoder.attention_scale and t5.encoder.norm == "t5"
    assert t5.encoder.head_size == 64 and t5.decoder.mask == "causal" and t5.share_embedding
    assert t5.embedding.norm == "none" and not t5.targets[0].tie_weights
    albert = load_config(MODELS / "albert" / "base_config.json").model
    assert albert.encoder.share_layers and albert.embedding.emb_size == 128 and albert.encoder.hidden_size == 768
    s2t = load_config(MODELS / "s2t" / "small_config.json")
    assert s2t.model.embedding.parts == ["speech", "sinusoidal"] and s2t.model.embedding.conv_channels == [1024]
    assert s2t.model.tgt_embedding.scale_embedding and s2t.model.targets[0].label_smoothing == 0.1
    assert s2t.train.schedule == "inverse_sqrt"
    clip = load_config(MODELS / "clip" / "base-32_config.json").model
    assert clip.encoder.type == "dual" and [s.hidden_size for s in clip.encoder.streams] == [512, 768]
    assert clip.embedding.streams[1].patch_size == 32 and clip.targets[0].type == "clr"
    assert clip.encoder.streams[1].act == "gelu_fast"
    beit = load_config(MODELS / "beit" / "base_config.json").model
    assert beit.targets[0].type == "mae" and beit.targets[0].image_vocab_size == 16384


def test_unknown_key_and_bad_value_are_refused():
    with pytest.raises(ConfigError, match=r"unknown TencentPretrain key 'hiden_size'.*did you mean 'hidden_size'"):
        translate({"encoder": "transformer", "hiden_size": 8})
    with pytest.raises(ConfigError, match=r"'gelu_fats'.*did you mean 'gelu_fast'.*valid choices"):
        translate({"encoder": "transformer", "hidden_act": "gelu_fats"})
    with pytest.raises(ConfigError, match="unknown TencentPretrain key 'layerz'"):
        translate({"encoder": "dual", "embedding": ["dual"], "target": ["clr"], "stream_0": {"layerz": 1},
                   "stream_1": {}})
    with pytest.raises(ConfigError, match="residual attention"):
        translate({"encoder": "transformer", "has_residual_attention": True})


def test_training_keys_follow_tencentpretrains_trainer():
    train = translate({"encoder": "transformer", "target": ["mlm"], "optimizer": "adamw", "scheduler": "linear",
                       "learning_rate": 2e-5, "warmup": 0.1})["train"]
    assert train["optimizer"] == "adamw" and train["adam_bias_correction"] is False  # its AdamW, correct_bias=False
    assert train["lr"] == 2e-5 and train["warmup_ratio"] == 0.1
    assert "adam_bias_correction" not in translate({"encoder": "transformer", "optimizer": "adafactor"})["train"]


def test_ignored_keys_are_documented_and_disjoint():
    assert IGNORED_KEYS and all(reason.strip() for reason in IGNORED_KEYS.values())
    assert not set(IGNORED_KEYS) & MAPPED_KEYS
    out = translate({"encoder": "transformer", "target": ["lm"], "image_preprocess": ["crop"]})
    assert "image_preprocess" not in json.dumps(out)
