"""Adding a modality to an aligned space (OneEncoder): a trained CLIP's towers frozen, a light speech tower trained
against its frozen text features, and the result one model folder with three streams."""

import numpy as np
import pytest
import torch

import modaloom
from modaloom.config_schema import Source, build
from modaloom.context import ForwardContext
from modaloom.data.audio import kaldi_fbank
from modaloom.errors import ConfigError
from modaloom.freeze import apply_strategies
from modaloom.model import build_model
from modaloom.train.config import TrainConfig
from modaloom.train.optim import build_optimizer
from modaloom.weights import read_weights

CLASSES = 4
COLOURS = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 220], [230, 220, 40]]) / 255.0
BINS = 20
TEXT = {"parts": ["word", "pos"], "vocab_size": 16, "emb_size": 32, "max_seq_length": 8, "norm": "none",
        "dropout": 0.0}
IMAGE = {"parts": ["patch", "pos"], "emb_size": 32, "max_seq_length": 5, "image_height": 16, "image_width": 16,
         "patch_size": 8, "cls_token": True, "norm": "none", "dropout": 0.0}
SPEECH = {"parts": ["speech"], "emb_size": 16, "max_seq_length": 64, "audio_feature_size": BINS,
          "conv_channels": [32], "conv_kernel_sizes": [3, 3], "norm": "layernorm", "dropout": 0.0}


def tower(width: int) -> dict:
    return {"type": "transformer", "hidden_size": width, "layers_num": 1, "heads_num": 2, "feedforward_size": 2 * width,
            "norm": "layernorm", "norm_position": "pre", "final_norm": True, "dropout": 0.0, "mask": "fully_visible"}


def clip_model_config() -> dict:
    return {"embedding": {"parts": ["dual"], "norm": "none", "dropout": 0.0, "streams": [TEXT, IMAGE]},
            "encoder": {"type": "dual", "streams": [tower(32), tower(32)]},
            "targets": [{"type": "clr", "feature_size": 16, "poolings": ["mean", "first"]}]}


def three_stream_config() -> dict:
    """The CLIP's two streams unchanged, a light speech stream, and a second ``clr`` over text (0) and speech (2)."""
    cfg = clip_model_config()
    cfg["embedding"]["streams"].append(SPEECH)
    cfg["encoder"]["streams"].append(tower(16))
    cfg["targets"].append({"type": "clr", "name": "speech", "streams": [0, 2], "feature_size": 16,
                           "poolings": ["mean", "mean"]})
    return cfg


FROZEN = ["embedding.streams.0", "embedding.streams.1", "encoder.streams.0", "encoder.streams.1", "targets.clr",
          "targets.speech.projections.0"]


def captions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """'[cls] <colour> [sep]' as ids: the class word is id 4 + class."""
    ids = torch.stack([torch.tensor([1, 4 + int(c), 2]) for c in labels])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def images(labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    pixels = 4 * (COLOURS[labels.numpy()][:, :, None, None] - 0.5) + rng.normal(0, 0.3, (len(labels), 3, 16, 16))
    return torch.tensor(pixels, dtype=torch.float32)


def tones(labels: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A sine tone per class (300, 600, 900, 1200 Hz, jittered, with noise), 0.2 s at 16 kHz, as filterbanks."""
    rate, t = 16000, np.arange(3200) / 16000
    feats = []
    for c in labels.numpy():
        freq = 300.0 * (c + 1) * rng.uniform(0.97, 1.03)
        wave = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3)) + rng.normal(0, 0.02, t.shape)
        feats.append(kaldi_fbank(wave.astype(np.float32), rate, num_bins=BINS))
    features = torch.tensor(np.stack(feats), dtype=torch.float32)
    features = (features - features.mean()) / features.std()
    return {"input_features": features, "feature_mask": torch.ones(features.shape[:2], dtype=torch.long)}


def train_steps(model, train_cfg, make_batch, steps: int) -> None:
    optimizer = build_optimizer(model, train_cfg, torch.device("cpu"))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(make_batch()).loss.backward()
        optimizer.step()


def features(model, batch: dict, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    ctx = ForwardContext()
    with torch.no_grad():
        model.eval()
        model(batch, ctx)
    return ctx.features[label]


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """A tiny CLIP trained on coloured squares with captions naming the colour."""
    root = tmp_path_factory.mktemp("align")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(clip_model_config())

    def batch():
        labels = torch.arange(16) % CLASSES
        return {**captions(labels), "pixel_values": images(labels, rng)}

    train_steps(model, build(TrainConfig, {"lr": 0.005, "clip_norm": 0}, Source(), "train"), batch, 40)
    model.save(root / "clip")
    return root


def test_a_speech_tower_aligns_to_the_frozen_clip_and_the_folder_holds_three_modalities(trained_clip):
    root = trained_clip
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    model = build_model(three_stream_config())
    train_cfg = build(TrainConfig, {"lr": 0.003, "clip_norm": 0, "freeze": FROZEN, "init_from": [
        {"prefix": "", "folder": str(root / "clip")},
        {"prefix": "targets.speech.projections.0", "folder": str(root / "clip"),
         "source_prefix": "targets.clr.projections.0"}]}, Source(), "train")
    lines = apply_strategies(model, train_cfg)
    assert "not in the folder" in lines[0] and "streams.2" in lines[0]  # the new tower starts fresh
    clip_state = read_weights(root / "clip" / "model.safetensors")
    locked = {k: v.clone() for k, v in model.state_dict().items()
              if any(k.startswith(f"{p}.") for p in FROZEN)}
    assert len(locked) == len(clip_state) + 1  # every CLIP tensor, and the speech head's copy of the text projection

    def batch():  # text-speech pairs: no image in the batch, so the image stream is skipped
        labels = torch.randint(0, CLASSES, (16,))
        return {**captions(labels), **tones(labels, rng)}

    out = model(batch())
    assert "speech_loss" in out.metrics and "clr_loss" not in out.metrics
    train_steps(model, train_cfg, batch, 50)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in locked.items())  # the frozen space is bit-identical
    assert all(torch.equal(after[k], clip_state[k]) for k in clip_state)

    # speech -> text: each held-out tone takes the class whose caption's (frozen) text feature is nearest
    labels = torch.arange(40) % CLASSES
    text, _ = features(model, {**captions(torch.arange(CLASSES)), **tones(torch.arange(CLASSES), rng)}, "speech")
    _, speech = features(model, {**captions(labels), **tones(labels, rng)}, "speech")
    accuracy = float(((speech @ text.T).argmax(1) == labels).float().mean())
    assert accuracy >= 0.75, accuracy  # chance is 0.25
    # speech -> image, through the shared space the speech tower never saw an image of: nearest class image
    _, image = features(model, {**captions(torch.arange(CLASSES)), "pixel_values": images(torch.arange(CLASSES), rng)},
                        "clr")
    accuracy = float(((speech @ image.T).argmax(1) == labels).float().mean())
    assert accuracy >= 0.75, accuracy

    # one folder, three modalities: it reloads, and its text-image pair is the CLIP's unchanged
    model.save(root / "three")
    loaded = modaloom.load(root / "three")
    assert len(loaded.embedding.streams) == 3 and len(loaded.encoder.streams) == 3
    pairs = {**captions(labels), "pixel_values": images(labels, rng)}
    reference = features(modaloom.load(root / "clip"), pairs, "clr")
    for a, b in zip(features(loaded, pairs, "clr"), reference, strict=True):
        assert torch.equal(a, b)
    _, reloaded = features(loaded, {**captions(labels), **tones(labels, np.random.default_rng(5))}, "speech")
    _, again = features(model, {**captions(labels), **tones(labels, np.random.default_rng(5))}, "speech")
    assert torch.allclose(reloaded, again)


@pytest.mark.parametrize("streams, error", [([0, 0], "two different stream indices"),
                                            ([0, 3], r"streams \[0, 3\]: the model has 3 streams")])
def test_clr_stream_choices_are_checked(streams, error):
    cfg = three_stream_config()
    cfg["targets"][1]["streams"] = streams
    with pytest.raises(ConfigError, match=error):
        build_model(cfg)


def test_streams_must_agree_and_number_at_least_two():
    cfg = three_stream_config()
    cfg["encoder"]["streams"].pop()
    with pytest.raises(ConfigError, match="3 streams but the embedding gives|embedding.streams and encoder"):
        build_model(cfg)
    cfg = clip_model_config()
    cfg["embedding"]["streams"].pop()
    with pytest.raises(ConfigError, match="2 or more streams"):
        build_model(cfg)


def test_a_moco_target_refuses_other_streams():
    cfg = three_stream_config()
    cfg["targets"][1] = {"type": "moco", "name": "speech", "streams": [0, 2], "feature_size": 16,
                         "poolings": ["mean", "mean"]}
    with pytest.raises(ConfigError, match=r"speech.streams \[0, 2\]: a moco target compares streams \[0, 1\] only"):
        build_model(cfg)
