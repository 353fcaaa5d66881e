"""``s2t``: speech-to-text pairs. Stores encoded audio bytes + transcript ids; at load time makes 80-bin
filterbanks (utterance-normalised, SpecAugment) as ``input_features`` and the decoder sequences."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modaloom.data.audio import AudioFeatures, SpecAugment, decode_audio
from modaloom.data.processors.base import Processor, SkipRecord, SourceRecord
from modaloom.data.processors.vision import media_bytes, pick_column, row_of
from modaloom.data.storage import FieldSpec
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register

AUDIO_COLUMNS = ("path", "audio", "audio_path", "file", "filename", "wav", "flac", "mp3", "ogg")
TRANSCRIPT_COLUMNS = ("text", "transcript", "sentence", "text_a", "caption", "txt")  # txt: webdataset


@dataclass
class S2tOptions(SpecAugment):
    """The SpecAugment fields (inherited, flat in the config) plus the audio and transcript options."""

    audio_column: str = ""  # empty: the first of path, audio, audio_path, file, filename, wav
    text_column: str = ""  # empty: the first of text, transcript, sentence, text_a, caption
    sample_rate: int = 16000  # features are computed at this rate (audio is resampled to it)
    num_bins: int = 80
    max_audio_frames: int = 6000  # longer utterances are skipped at preprocess time (10 ms frames)
    normalize: bool = True  # utterance mean / variance normalisation
    specaugment: bool = True

    def validate(self) -> None:
        if self.sample_rate <= 0 or self.num_bins <= 0 or self.max_audio_frames <= 0:
            raise ConfigError(f"sample_rate, num_bins and max_audio_frames must be positive: {self}")
        self.augment()

    def augment(self) -> SpecAugment:
        return SpecAugment(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SpecAugment)})


@register("processor", "s2t")
class S2tProcessor(Processor):
    """Audio + transcript -> ``input_features`` (T, 80), ``decoder_input_ids`` = [bos] + text,
    ``lm_labels`` = text + [eos]; ``feature_mask`` and ``decoder_attention_mask`` come from the collate.

    bos / eos are the tokenizer's own, or [CLS] / [SEP] for BERT-style vocabularies.
    """

    name = "s2t"
    Options = S2tOptions
    input_kind = "row"

    def __init__(self, tokenizer: Any, seq_length: int, options: Any = None, seed: int = 7):
        super().__init__(tokenizer, seq_length, options, seed)
        self.features = AudioFeatures(self.options.sample_rate, self.options.num_bins, self.options.normalize)
        self.augment = self.options.augment() if self.options.specaugment else None
        self.bos_id = self._first_id(("bos", "cls"))
        self.eos_id = self._first_id(("eos", "sep"))

    def _first_id(self, roles: tuple[str, ...]) -> int:
        for role in roles:
            found = self.tokenizer.optional_id(role)
            if found is not None:
                return found
        raise DataError(f"processor 's2t' needs a {' or '.join(roles)} token; the vocabulary has none")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"audio": FieldSpec("uint8"), "text_ids": FieldSpec(self.id_dtype)}

    def texts(self, record: SourceRecord) -> list[str]:
        if not isinstance(record.value, Mapping):
            return []
        try:
            return [pick_column(record.value, self.options.text_column, TRANSCRIPT_COLUMNS, "transcript")]
        except SkipRecord:
            return []

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        row = row_of(record, self.name)
        pick_column(row, self.options.text_column, TRANSCRIPT_COLUMNS, "transcript")  # skips if absent
        ids = record.encoded[0] if record.encoded else []
        if not ids:
            raise SkipRecord("empty_transcript: the transcript has no tokens")
        if len(ids) + 1 > self.seq_length:
            raise SkipRecord(f"too_long: transcript has {len(ids)} tokens, seq_length {self.seq_length} "
                             "leaves room for at most seq_length - 1")
        path, data = media_bytes(record, self.options.audio_column, AUDIO_COLUMNS, "audio")
        try:
            wave, rate = decode_audio(data, where=str(path))
        except DataError as exc:
            raise SkipRecord(f"corrupt_audio: {exc}") from None
        frames = int(len(wave) / rate * 100)
        if frames < 3:
            raise SkipRecord(f"too_short: {path} lasts {len(wave) / rate:.3f} s")
        if frames > self.options.max_audio_frames:
            raise SkipRecord(f"too_long: {path} has ~{frames} frames, max_audio_frames is "
                             f"{self.options.max_audio_frames}")
        yield {"audio": np.frombuffer(data, dtype=np.uint8), "text_ids": np.asarray(ids)}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        features = self.features(stored["audio"])
        if self.augment is not None:
            features = self.augment(features, rng)
        text = np.asarray(stored["text_ids"], dtype=np.int64)
        return {
            "input_features": features,
            "decoder_input_ids": np.concatenate([[self.bos_id], text]).astype(np.int64),
            "lm_labels": np.concatenate([text, [self.eos_id]]).astype(np.int64),
        }
