"""Speech processors. ``s2t``: speech-to-text pairs; stores encoded audio bytes + transcript ids, at load time makes
80-bin filterbanks (utterance-normalised, SpecAugment) as ``input_features`` and the decoder sequences.
``speech_text``: audio + caption pairs for a contrastive ``clr`` head (a speech tower aligned to a text tower,
docs/objectives.md); the same audio handling (``AudioClips``), the caption as the ``clip`` processor makes it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modaloom.data.audio import AudioFeatures, SpecAugment, decode_audio
from modaloom.data.processors.base import Processor, SkipRecord, SourceRecord
from modaloom.data.processors.image_text import CaptionIds
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


class AudioClips:
    """The audio half shared by the speech processors: at preprocess time a row's audio (a file it names, or bytes
    it holds) checked to decode and to last 3 frames to ``max_audio_frames`` (else a recorded skip); at load time
    its filterbanks (resampled, utterance-normalised, SpecAugment when ``specaugment``)."""

    def __init__(self, options: S2tOptions):
        self.options = options
        self.to_features = AudioFeatures(options.sample_rate, options.num_bins, options.normalize)
        self.augment = options.augment() if options.specaugment else None

    def stored(self, record: SourceRecord) -> np.ndarray:
        """The encoded audio bytes of a row, to store; skips name the file and the reason."""
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
        return np.frombuffer(data, dtype=np.uint8)

    def features(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, num_bins) float32 filterbanks of stored audio bytes, augmented when SpecAugment is on."""
        features = self.to_features(audio)
        return features if self.augment is None else self.augment(features, rng)


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
        self.audio = AudioClips(self.options)
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
        yield {"audio": self.audio.stored(record), "text_ids": np.asarray(ids)}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        features = self.audio.features(stored["audio"], rng)
        text = np.asarray(stored["text_ids"], dtype=np.int64)
        return {
            "input_features": features,
            "decoder_input_ids": np.concatenate([[self.bos_id], text]).astype(np.int64),
            "lm_labels": np.concatenate([text, [self.eos_id]]).astype(np.int64),
        }


@dataclass
class SpeechTextOptions(S2tOptions):
    """``s2t``'s audio options (SpecAugment off by default: alignment pairs, not recognition) and the caption's."""

    text_column: str = ""  # empty: the first of caption, text, text_a, sentence, title, txt
    specaugment: bool = False  # true: S2T's SpecAugment policy on the training audio


@register("processor", "speech_text")
class SpeechTextProcessor(CaptionIds, Processor):
    """Audio + caption pairs for the speech and text streams of a dual model (a ``clr`` head over them).

    Each pair gives ``input_features`` (T, num_bins; ``s2t``'s filterbanks) and ``input_ids`` ([CLS] caption
    [SEP] or bos/eos, cut to seq_length, as ``clip`` makes them; cut captions are counted in the manifest's
    ``counts.truncated``).

    Rows as the ``clip`` processor reads them, the audio in place of the image: TSV with a header (``text path``)
    or JSONL naming audio files (wav, flac, ogg; relative to the list's folder), or rows holding the bytes (Parquet,
    ``datasets`` folders, webdataset shards with ``wav``/``flac``/``ogg`` and ``txt`` members). A missing,
    undecodable, too short or too long audio file, or an empty caption, is a skip recorded with file and line.
    """

    name = "speech_text"
    Options = SpeechTextOptions
    input_kind = "row"

    def __init__(self, tokenizer: Any, seq_length: int, options: Any = None, seed: int = 7):
        super().__init__(tokenizer, seq_length, options, seed)
        self.audio = AudioClips(self.options)
        self.set_caption_ids()

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"audio": FieldSpec("uint8"), "input_ids": FieldSpec(self.id_dtype)}

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        yield self.store_caption(record, lambda r: ("audio", self.audio.stored(r)))

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"input_features": self.audio.features(stored["audio"], rng),
                "input_ids": np.asarray(stored["input_ids"], dtype=np.int64)}
