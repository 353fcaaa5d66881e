"""The preprocessing record of a model folder (``preprocessing.json``): ``pretrain`` writes the speech processor's
options, ``finetune`` carries them over, and ``evaluate`` / ``features --side speech`` make their filterbanks with
them (a user's override winning; a folder without the record reads with the defaults)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modaloom.cli.main import main
from modaloom.config_schema import Source, build
from modaloom.data.audio import AudioFeatures
from modaloom.data.preprocessing_record import PREPROCESSING_NAME, read_record
from modaloom.errors import CheckpointError, ConfigError
from modaloom.model_config import ModelConfig
from modaloom.tasks.audio_io import model_audio_features
from modaloom.tasks.finetune import task_for_model
from tests.tasks.test_clip_speech import BINS, three_stream_model, write_tones
from tests.tasks.test_clip_tasks import tiny_clip_config, write_vocab

RECORDED = {"sample_rate": 8000, "normalize": False}  # not the speech_text defaults (16000, true)


def text_speech_model(root: Path) -> dict:
    """A tiny CLIP's text and image streams plus a speech stream, a ``speech`` clr head over text and speech."""
    return three_stream_model(tiny_clip_config(root / "clip.json"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tones preprocessed at 8 kHz without normalisation, and a model pre-trained on them for 2 steps."""
    root = tmp_path_factory.mktemp("record")
    config = root / "model.json"
    config.write_text(json.dumps({"model": text_speech_model(root), "data": {"processor": "speech_text"}}))
    assert main(["preprocess", "--processor", "speech_text", "--corpus", str(write_tones(root, "tones", 8, 1)),
                 "--vocab", str(write_vocab(root / "vocab.txt")), "--out", str(root / "data"), "--seq-length", "16",
                 "--option", f"num_bins={BINS}", "--option", "sample_rate=8000", "--option", "normalize=false"]) == 0
    assert main(["pretrain", "--config", str(config), "--data", str(root / "data"), "--out", str(root / "run"),
                 "--steps", "2", "--batch-size", "4", "train.threads=1"]) == 0
    write_tones(root, "labelled", 4, 8, labelled=True)
    return root


def features(root: Path, model: Path, out: str, *options: str) -> np.ndarray:
    extra = [arg for option in options for arg in ("--audio-option", option)]
    assert main(["features", "--model", str(model), "--input", str(root / "labelled.tsv"), "--side", "speech",
                 "--head", "speech", "--out", str(root / out), *extra]) == 0
    return np.load(root / out)


def test_pretrain_records_the_speech_options_and_features_use_them_unless_overridden(trained):
    model = trained / "run" / "model"
    record = read_record(model)
    assert record is not None and record["processor"] == "speech_text" and record["seq_length"] == 16
    assert {k: record["options"][k] for k in (*RECORDED, "num_bins")} == {**RECORDED, "num_bins": BINS}
    recorded = features(trained, model, "recorded.npy")
    assert np.allclose(recorded, features(trained, model, "same.npy", "sample_rate=8000", "normalize=false"))
    defaults = features(trained, model, "override.npy", "sample_rate=16000", "normalize=true")
    assert not np.allclose(recorded, defaults, atol=1e-3)
    bare = trained / "bare"  # a folder without the record (converted, or saved before it existed): defaults
    shutil.copytree(model, bare)
    (bare / PREPROCESSING_NAME).unlink()
    assert np.allclose(features(trained, bare, "bare.npy"), defaults)


def test_evaluate_reads_the_record_and_task_options_override_it(trained, capsys):
    model = trained / "run" / "model"
    job = task_for_model(model, "zero_shot")
    job.set_options({"template": "a photo of the {} square", "head": "speech"})
    made = job.loader([], False).features
    assert (made.sample_rate, made.num_bins, made.normalize) == (8000, BINS, False)
    job.set_options({"template": "a photo of the {} square", "head": "speech", "sample_rate": 22050})
    made = job.loader([], False).features
    assert (made.sample_rate, made.normalize) == (22050, False)
    capsys.readouterr()
    assert main(["evaluate", "--task", "zero_shot", "--model", str(model), "--input", str(trained / "labelled.tsv"),
                 "task.template=a photo of the {} square", "task.head=speech", "task.normalize=true"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == 4


def test_finetune_carries_the_record_into_its_model(trained, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "clip_retrieval", "--model", str(trained / "run" / "model"), "--train",
                 str(trained / "tones.tsv"), "--dev", str(trained / "tones.tsv"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "4",
                 "task.head=speech", "train.threads=1"]) == 0
    assert read_record(out / "model") == read_record(trained / "run" / "model")
    job = task_for_model(out / "model", "clip_retrieval")
    assert job.loader([], False).features.sample_rate == 8000


def test_a_record_that_contradicts_the_model_or_is_damaged_is_an_error_naming_it(trained, tmp_path, capsys):
    spec = text_speech_model(tmp_path)
    spec["embedding"]["streams"][0]["vocab_size"] = 12
    cfg = build(ModelConfig, spec, Source(), "model")
    assert model_audio_features(cfg, {"num_bins": BINS, "sample_rate": 8000}).sample_rate == 8000
    assert isinstance(model_audio_features(cfg), AudioFeatures) and model_audio_features(cfg).sample_rate == 16000
    with pytest.raises(ConfigError, match=f"trained on 80-bin filterbanks .* audio_feature_size {BINS}"):
        model_audio_features(cfg, {"num_bins": 80})
    (tmp_path / PREPROCESSING_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{PREPROCESSING_NAME}: cannot read the preprocessing record"):
        read_record(tmp_path)
    capsys.readouterr()
    model, tones = str(trained / "run" / "model"), str(trained / "labelled.tsv")
    assert main(["features", "--model", model, "--input", tones, "--side", "speech", "--head", "speech",
                 "--out", str(tmp_path / "x.npy"), "--audio-option", "8000"]) == 2
    assert "--audio-option takes KEY=VALUE (sample_rate=8000, normalize=false), got '8000'" in capsys.readouterr().err
    assert main(["features", "--model", model, "--input", tones, "--side", "speech", "--head", "speech",
                 "--out", str(tmp_path / "x.npy"), "--audio-option", "sample_rate=-1"]) == 2
    assert "sample_rate must be positive, got -1" in capsys.readouterr().err
    assert main(["evaluate", "--task", "zero_shot", "--model", model, "--input", tones,
                 "task.sample_rate=8000"]) == 2  # the default head compares text with images
    assert "task.sample_rate set the audio features, but head 'clr' compares text with image" in capsys.readouterr().err
