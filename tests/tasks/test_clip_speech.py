"""A speech tower aligned to a frozen CLIP through the CLI (OneEncoder, docs/objectives.md): ``preprocess
--processor speech_text`` + ``pretrain`` with the CLIP's parts loaded and locked, then ``evaluate --task
clip_retrieval | zero_shot task.head=speech`` and ``features --side speech`` on the three-stream folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from modaloom.cli.main import main
from modaloom.config_schema import Source, build
from modaloom.errors import ConfigError
from modaloom.model_config import ModelConfig
from modaloom.tasks.clip import clip_pair
from tests.tasks.test_clip_tasks import COLOURS, tiny_clip_config, write_pairs, write_vocab

BINS = 20
SPEECH = {"parts": ["speech"], "emb_size": 16, "max_seq_length": 64, "audio_feature_size": BINS,
          "conv_channels": [32], "conv_kernel_sizes": [3, 3], "norm": "layernorm", "dropout": 0.0}
TOWER = {"type": "transformer", "hidden_size": 16, "layers_num": 1, "heads_num": 2, "feedforward_size": 32,
         "norm": "layernorm", "norm_position": "pre", "final_norm": True, "dropout": 0.0, "mask": "fully_visible"}
FROZEN = ["embedding.streams.0", "embedding.streams.1", "encoder.streams.0", "encoder.streams.1", "targets.clr",
          "targets.speech.projections.0"]


def three_stream_model(clip_json: Path) -> dict:
    """The CLIP's text and image streams, a speech stream, and a ``speech`` clr head over text (0) and speech (2)."""
    model = json.loads(clip_json.read_text())["model"]
    model["embedding"]["streams"].append(SPEECH)
    model["encoder"]["streams"].append(TOWER)
    model["targets"].append({"type": "clr", "name": "speech", "streams": [0, 2], "feature_size": 16,
                             "poolings": ["mean", "mean"]})
    return model


def write_tones(root: Path, name: str, count: int, seed: int, labelled: bool = False) -> Path:
    """``count`` tone bursts, one frequency per colour (jittered, with noise), as wav files listed with their caption
    (TSV ``text path``) or their colour (``label path``)."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir()
    lines = ["label\tpath" if labelled else "text\tpath"]
    t = np.arange(4800) / 16000
    for i in range(count):
        c = i % len(COLOURS)
        colour = list(COLOURS)[c]
        freq = 300.0 * (c + 1) * rng.uniform(0.97, 1.03)
        on = t < rng.uniform(0.12, 0.2)  # a burst, then quiet: utterance normalisation keeps the on/off contrast
        wave = on * rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3)) + rng.normal(0, 0.02, t.shape)
        soundfile.write(root / name / f"{i}.wav", wave, 16000)
        lines.append(f"{colour if labelled else f'a photo of the {colour} square'}\t{name}/{i}.wav")
    (root / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root / f"{name}.tsv"


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A tiny CLIP pre-trained on coloured squares, then a speech tower pre-trained on tones against it (locked)."""
    root = tmp_path_factory.mktemp("clip_speech")
    vocab, clip_json = write_vocab(root / "vocab.txt"), tiny_clip_config(root / "clip.json")
    assert main(["preprocess", "--processor", "clip", "--corpus", str(write_pairs(root, "squares", 32, 0)),
                 "--vocab", str(vocab), "--out", str(root / "squares_data"), "--seq-length", "16",
                 "--option", "image_height=16", "--option", "image_width=16"]) == 0
    assert main(["pretrain", "--config", str(clip_json), "--data", str(root / "squares_data"), "--out",
                 str(root / "clip"), "--steps", "60", "--batch-size", "8", "--lr", "3e-3", "train.threads=1"]) == 0
    clip = str(root / "clip" / "model")
    config = root / "three.json"
    config.write_text(json.dumps({"model": three_stream_model(clip_json), "data": {"processor": "speech_text"},
                                  "train": {"freeze": FROZEN, "init_from": [
                                      {"prefix": "", "folder": clip},
                                      {"prefix": "targets.speech.projections.0", "folder": clip,
                                       "source_prefix": "targets.clr.projections.0"}]}}))
    assert main(["preprocess", "--processor", "speech_text", "--corpus", str(write_tones(root, "tones", 48, 1)),
                 "--vocab", str(vocab), "--out", str(root / "tones_data"), "--seq-length", "16",
                 "--option", f"num_bins={BINS}"]) == 0
    assert main(["pretrain", "--config", str(config), "--data", str(root / "tones_data"), "--out",
                 str(root / "three"), "--steps", "120", "--batch-size", "8", "--lr", "3e-3", "train.threads=1",
                 "train.log_every=5"]) == 0
    write_tones(root, "heldout", 8, 7)  # held-out pairs, and labelled clips for zero-shot
    write_tones(root, "labelled", 12, 8, labelled=True)
    return root


def test_the_speech_head_trains_from_the_cli_and_retrieval_and_zero_shot_read_it(aligned, capsys):
    root = aligned
    rows = [json.loads(line) for line in (root / "three" / "metrics.jsonl").read_text().splitlines()]
    assert "speech_loss" in rows[-1] and "clr_loss" not in rows[-1]  # no image in the data: only the speech head
    assert rows[-1]["speech_loss"] < 0.8 * rows[0]["speech_loss"], [r["speech_loss"] for r in rows]
    model = str(root / "three" / "model")
    capsys.readouterr()
    assert main(["evaluate", "--task", "clip_retrieval", "--model", model, "--input",
                 str(root / "heldout.tsv"), "task.head=speech"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # 8 clips, 2 per colour, captions the same within a colour: chance 1/8 for text -> speech, 2/8 the other way
    assert metrics["examples"] == 8 and metrics["t2i_r@1"] >= 0.25 and metrics["i2t_r@1"] >= 0.5, metrics
    assert main(["evaluate", "--task", "zero_shot", "--model", model, "--input",
                 str(root / "labelled.tsv"), "task.head=speech",
                 "task.template=a photo of the {} square"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["classes"] == 4 and metrics["accuracy"] >= 0.75, metrics  # chance 0.25


def test_features_writes_either_side_of_the_speech_head(aligned, capsys):
    root = aligned
    model = str(root / "three" / "model")
    assert main(["features", "--model", model, "--input", str(root / "labelled.tsv"), "--side", "speech",
                 "--head", "speech", "--out", str(root / "speech.npy")]) == 0
    speech = np.load(root / "speech.npy")
    assert speech.shape == (12, 16) and np.allclose(np.linalg.norm(speech, axis=1), 1.0, atol=1e-5)
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"a photo of the {c} square\n" for c in COLOURS))
    assert main(["features", "--model", model, "--input", str(prompts), "--side", "text", "--head", "speech",
                 "--out", str(root / "text.npy")]) == 0
    text = np.load(root / "text.npy")
    assert text.shape == (4, 16)
    assert ((speech @ text.T).argmax(1) == np.arange(12) % 4).mean() >= 0.75  # the same reading as zero_shot
    capsys.readouterr()
    assert main(["features", "--model", model, "--input", str(root / "labelled.tsv"), "--side", "speech",
                 "--out", str(root / "x.npy")]) == 2  # the default head is the CLIP's (text + image)
    assert "--side speech: head 'clr' compares text with image" in capsys.readouterr().err


def test_a_clip_without_speech_refuses_text_speech_batches_naming_the_missing_input(aligned, tmp_path, capsys):
    root = aligned
    capsys.readouterr()
    assert main(["pretrain", "--config", str(root / "clip.json"), "--data", str(root / "tones_data"), "--out",
                 str(tmp_path / "o"), "--steps", "2", "--batch-size", "4", "train.threads=1",
                 "data.processor=speech_text"]) == 2
    assert "target 'clr' compares streams [0, 1] and the batch has no pixel_values" in capsys.readouterr().err


def test_heads_are_chosen_by_name_or_text_and_image_and_listed_otherwise(tmp_path):
    spec = three_stream_model(tiny_clip_config(tmp_path / "clip.json"))
    spec["embedding"]["streams"][0]["vocab_size"] = 16
    cfg = build(ModelConfig, spec, Source(), "model")
    assert clip_pair(cfg) == clip_pair(cfg, "clr") and clip_pair(cfg).kind == "image"
    speech = clip_pair(cfg, "speech")
    assert (speech.label, speech.text, speech.other, speech.kind, speech.text_side) == ("speech", 0, 2, "speech", 0)
    with pytest.raises(ConfigError, match=r"task.head 'nope' .* clr \(streams \[0, 1\]: text\+image\), "
                                          r"speech \(streams \[0, 2\]: text\+speech\)"):
        clip_pair(cfg, "nope")
    spec["targets"][0]["streams"] = [1, 2]  # image + speech, and no text-image head to default to
    cfg = build(ModelConfig, spec, Source(), "model")
    with pytest.raises(ConfigError, match="2 contrastive heads and none is the one over text and image"):
        clip_pair(cfg)
    with pytest.raises(ConfigError, match=r"head 'clr' compares streams \[1, 2\] \(image\+speech\)"):
        clip_pair(cfg, "clr")


def test_clip_retrieval_fine_tunes_the_speech_head_alone_and_its_folder_reads_without_options(aligned, tmp_path,
                                                                                             capsys):
    root = aligned
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "clip_retrieval", "--model", str(root / "three" / "model"), "--train",
                 str(root / "tones.tsv"), "--dev", str(root / "heldout.tsv"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "8",
                 "task.head=speech", "train.threads=1"]) == 0
    assert [t["name"] for t in json.loads((out / "model" / "config.json").read_text())["model"]["targets"]] == ["speech"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model"), "--input", str(root / "heldout.tsv")]) == 0
    assert json.loads(capsys.readouterr().out)["i2t_r@1"] >= 0.5


def test_features_reads_either_side_of_a_two_stream_clip(aligned, capsys):
    root = aligned
    clip = str(root / "clip" / "model")
    assert main(["features", "--model", clip, "--input", str(root / "squares.tsv"), "--side", "image",
                 "--out", str(root / "squares.npy")]) == 0
    images = np.load(root / "squares.npy")
    assert images.shape == (32, 16) and np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    capsys.readouterr()
    assert main(["features", "--model", clip, "--input", str(root / "labelled.tsv"), "--side", "speech",
                 "--out", str(root / "y.npy")]) == 2
    assert "head 'clr' compares text with image; use --side text or --side image" in capsys.readouterr().err
    assert main(["features", "--model", clip, "--input", str(root / "squares.tsv"), "--head", "clr",
                 "--out", str(root / "y.npy")]) == 2
    assert "--head picks a clr head of a dual model; give --side" in capsys.readouterr().err
