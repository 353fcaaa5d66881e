"""Audio clips for the speech side of a dual model's tasks (``clip_retrieval``, ``zero_shot``, ``features`` on a
``clr`` head over a text and a speech stream): rows read as ``image_io`` reads image lists, with ``media="audio"``
(TSV ``text path`` / ``label path``, JSONL ``{"text"|"label", "audio"}``, or a folder of class sub-folders of
wav/flac/ogg files); each clip's bytes checked to decode when read, its features made per batch.

Features are made as the model's training data made them: the sample rate and the utterance normalisation of the
speech processor recorded in the model folder's ``preprocessing.json`` (``data/preprocessing_record.py``), else the
``speech_text`` processor's defaults (16 kHz, normalised); a user's ``sample_rate`` / ``normalize`` override both.
Kaldi filterbanks with as many bins as the speech stream's ``audio_feature_size`` (a recorded ``num_bins`` that
differs is an error), no SpecAugment; frames beyond what the stream's positions admit after subsampling are cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modaloom.data.audio import AudioFeatures, decode_audio
from modaloom.errors import ConfigError
from modaloom.tasks.image_io import ImageRow, add_example_fields, read_checked_bytes
from modaloom.tasks.text_io import MemoryLoader

SPEECH_PARTS = ("speech",)


def read_audio_bytes(row: ImageRow) -> bytes:
    """The encoded audio a row names, checked to decode."""
    return read_checked_bytes(row, "audio", decode_audio)


def speech_embedding(model_cfg: Any) -> Any:
    """The embedding section holding the model's speech part (a stream of a dual model)."""
    sections = list(getattr(model_cfg.embedding, "streams", None) or []) or [model_cfg.embedding]
    for section in sections:
        if any(part in section.parts for part in SPEECH_PARTS):
            return section
    raise ConfigError(f"the model has no speech embedding part in embedding.parts {model_cfg.embedding.parts}")


@dataclass
class AudioInputOptions:
    """What a user may set for the speech inputs of ``evaluate`` (``task.<key>``) and ``features``
    (``--audio-option``); None: the model's preprocessing record, else the ``speech_text`` defaults."""

    sample_rate: int | None = None  # audio is resampled to this rate before the filterbanks
    normalize: bool | None = None  # utterance-level mean / variance normalisation

    def validate(self) -> None:
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {self.sample_rate}")


AUDIO_INPUT_KEYS = ("sample_rate", "normalize")


def recorded_audio_options(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The audio options of a preprocessing record whose processor made audio features (``s2t``,
    ``speech_text``): sample_rate, num_bins, normalize; {} for none or another processor."""
    options = (record or {}).get("options") or {}
    if not isinstance(options, Mapping) or "num_bins" not in options:
        return {}
    return {key: options[key] for key in ("sample_rate", "num_bins", "normalize") if key in options}


def model_audio_features(model_cfg: Any, recorded: Mapping[str, Any] | None = None,
                         override: AudioInputOptions | None = None) -> AudioFeatures:
    """Filterbanks sized for the model's speech stream (bins, most frames its positions admit), at the
    sample rate and normalisation of ``override``, else of ``recorded`` (``recorded_audio_options``), else 16 kHz
    and normalised."""
    from modaloom.tasks.speech_to_text import frames_admitted

    section = speech_embedding(model_cfg)
    bins = int(section.audio_feature_size)
    recorded = dict(recorded or {})
    if "num_bins" in recorded and int(recorded["num_bins"]) != bins:
        raise ConfigError(f"the model was trained on {recorded['num_bins']}-bin filterbanks (its preprocessing.json) "
                          f"but its speech stream reads audio_feature_size {bins}; the model folder is inconsistent")
    override = override or AudioInputOptions()
    rate = override.sample_rate if override.sample_rate is not None else int(recorded.get("sample_rate", 16000))
    normalize = override.normalize if override.normalize is not None else bool(recorded.get("normalize", True))
    return AudioFeatures(rate, bins, normalize, frames_admitted(section))


def blank_features(rows: int, model_cfg: Any) -> dict[str, torch.Tensor]:
    """Silent speech inputs for ``rows`` rows: the other side of a pair whose speech side is not read."""
    bins = int(speech_embedding(model_cfg).audio_feature_size)
    return {"input_features": torch.zeros(rows, 16, bins), "feature_mask": torch.ones(rows, 16, dtype=torch.long)}


@dataclass
class AudioLoader(MemoryLoader):
    """``MemoryLoader`` over examples holding encoded audio bytes under ``image`` (the row's media, as
    ``image_io`` names it) (+ ``label``, ``input_ids``, ``image_id``): each batch makes the filterbanks.
    Batch keys: input_features, feature_mask, index, [task_labels], [input_ids, attention_mask], [image_id]."""

    features: AudioFeatures | None = None

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        assert self.features is not None
        clips = [self.features(e["image"], e["where"]) for e in examples]
        frames = max(len(c) for c in clips)
        values = np.zeros((len(clips), frames, clips[0].shape[1]), dtype=np.float32)
        mask = np.zeros((len(clips), frames), dtype=np.int64)
        for i, clip in enumerate(clips):
            values[i, :len(clip)] = clip
            mask[i, :len(clip)] = 1
        return add_example_fields({"input_features": torch.from_numpy(values), "feature_mask": torch.from_numpy(mask)},
                                  examples, self.pad_id)
