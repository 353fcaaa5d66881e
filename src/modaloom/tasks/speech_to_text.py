"""The ``speech_to_text`` task: audio features -> encoder, transcript -> decoder (teacher forcing); beam search.

Data (format by suffix: ``.jsonl``/``.json`` is JSONL, anything else TSV):

- TSV as TencentPretrain's ``run_speech2text.py``: a header naming the columns, ``text`` and the audio path
  (``path``, or TencentPretrain's ``wav_path``), one utterance a line, fields split on tabs. A file to
  transcribe may lack ``text``.
- JSONL: ``{"text": ..., "audio": "a.wav"}`` one object a line (``text`` optional for prediction).

Relative audio paths are read from the data file's folder. Audio is decoded with soundfile (wav, flac, ogg;
mixed down to mono), resampled to ``sample_rate`` by band-limited FFT resampling (``data/audio.py``
``resample``) when its rate differs, turned into Kaldi filterbanks with as many bins as the model's
``embedding.audio_feature_size`` (kaldi-native-fbank), normalised per utterance (CMVN) when ``normalize``.
Transcripts are tokenized with the model folder's tokenizer (or ``--vocab``); the decoder reads
``[bos] + text`` and predicts ``text + [eos]`` (bos/eos: ``<s>``/``</s>``, else ``[CLS]``/``[SEP]``, as
TencentPretrain).

Policies (documented in docs/tasks.md): a missing or undecodable audio file, an utterance shorter than one
25 ms frame, an empty transcript, a missing column or field: ``DataError`` naming ``file:line``, in every file
(so predictions line up one-to-one with the input). Audio longer than ``max_audio_frames`` frames (10 ms
each; lowered to what the model's ``embedding.max_seq_length`` admits after subsampling) keeps its first
frames; a transcript longer than ``seq_length - 1`` tokens keeps its first tokens; both are counted per file,
reported on stderr and recorded in the model folder.

Metrics (jiwer): corpus WER and CER (edits over reference words / characters) after collapsing whitespace, and
lower-casing both sides when the tokenizer lower-cases; the best dev checkpoint has the lowest WER.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from modaloom.config_schema import build, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.text_io import MemoryLoader, is_jsonl, read_lines, tsv_header, tsv_rows

AUDIO_COLUMNS = ("path", "wav_path")  # TSV; TencentPretrain's files name it wav_path
AUDIO_FIELDS = ("audio", "path")  # JSONL
DEFAULT_LM_TARGET = {"type": "lm", "transform": False, "tie_weights": True, "output_bias": False}


@dataclass
class SpeechToTextOptions:
    """Options of the speech-to-text task (``task.<key>=value``), recorded in the fine-tuned model."""

    sample_rate: int = 16000  # audio is resampled to this rate before the filterbanks
    normalize: bool = True  # utterance-level mean / variance normalisation of the filterbanks (CMVN)
    max_audio_frames: int = 6000  # 10 ms frames kept per utterance at most (60 s; TencentPretrain's default)
    num_beams: int = 4  # beam search width for dev, test, predict and evaluate (1: greedy)
    max_new_tokens: int = 0  # tokens generated per utterance at most; 0: data.seq_length
    length_penalty: float = 1.0  # beam score = sum of log-probs / length ** length_penalty

    def validate(self) -> None:
        if self.sample_rate <= 0 or self.max_audio_frames <= 0:
            raise ConfigError(f"sample_rate and max_audio_frames must be positive, got "
                              f"{self.sample_rate} and {self.max_audio_frames}")
        if self.num_beams < 1 or self.max_new_tokens < 0:
            raise ConfigError(f"num_beams must be >= 1 and max_new_tokens >= 0, got {self.num_beams} "
                              f"and {self.max_new_tokens}")


@dataclass
class Utterance:
    """One line of a data file: where it is, the audio file it names, its transcript (None: unlabelled)."""

    where: str  # "file:line"
    audio: Path
    text: str | None = None


def _audio_path(data_file: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else data_file.parent / path


def _check_text(where: str, text: Any) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: transcript must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: empty transcript; remove the line or give its text")
    return text


def read_utterances(path: str | Path, need_text: bool) -> list[Utterance]:
    """Every utterance of a TSV (``text path``) or JSONL (``{"text", "audio"}``) file; ``need_text``: a line
    without a transcript is an error. Files are only named here; they are read by ``utterance_features``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines = read_lines(path)
    found = _read_jsonl(path, lines, need_text) if is_jsonl(path) else _read_tsv(path, lines, need_text)
    if not found:
        raise DataError(f"{path}: no utterances")
    return found


def _read_tsv(path: Path, lines: list[str], need_text: bool) -> list[Utterance]:
    header = tsv_header(path, lines, "text path", ("text",) if need_text else ())
    audio_column = next((c for c in AUDIO_COLUMNS if c in header), None)
    if audio_column is None:
        raise DataError(f"{path}:1: header {header} has no audio column ({' or '.join(AUDIO_COLUMNS)})")
    out = []
    for where, value in tsv_rows(path, lines, header):
        if not value[audio_column].strip():
            raise DataError(f"{where}: empty {audio_column}")
        text = _check_text(where, value["text"]) if "text" in value else None
        out.append(Utterance(where, _audio_path(path, value[audio_column].strip()), text))
    return out


def _read_jsonl(path: Path, lines: list[str], need_text: bool) -> list[Utterance]:
    out = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON utterance)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object with text and audio, got {type(value).__name__}")
        audio = next((value[k] for k in AUDIO_FIELDS if k in value), None)
        if not isinstance(audio, str) or not audio.strip():
            raise DataError(f"{where}: no string field audio (the audio file's path; keys: {sorted(value)})")
        if need_text and "text" not in value:
            raise DataError(f"{where}: no field text, which this file needs")
        text = _check_text(where, value["text"]) if "text" in value else None
        out.append(Utterance(where, _audio_path(path, audio.strip()), text))
    return out


def utterance_features(utterance: Utterance, extractor: Any) -> np.ndarray:
    """(T, bins) filterbank frames of the utterance's audio file (``data.audio.AudioFeatures``)."""
    where = f"{utterance.where}: {utterance.audio}"
    try:
        data = utterance.audio.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{utterance.where}: audio file {utterance.audio} does not exist") from None
    except OSError as exc:
        raise DataError(f"{utterance.where}: cannot read audio file {utterance.audio} ({exc.strerror or exc})") \
            from None
    return extractor(data, where)


def frames_admitted(embedding: Any) -> int:
    """The most filterbank frames whose subsampled length fits the speech embedding's ``max_seq_length``."""
    from modaloom.embeddings.speech import subsampled_lengths

    kernels = list(embedding.conv_kernel_sizes)
    limit = int(embedding.max_seq_length)
    frames = limit * 2 ** len(kernels) + 2 ** len(kernels)
    while frames > 1 and int(subsampled_lengths(torch.tensor([frames]), kernels)[0]) > limit:
        frames -= 1
    return frames


def normalise_text(text: str, lowercase: bool) -> str:
    """The text WER and CER compare: whitespace collapsed, lower-cased when the tokenizer lower-cases."""
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def tokenizer_lowercases(tokenizer: Any) -> bool:
    """Whether the tokenizer folds case (WordPiece does unless told not to; the others when told to)."""
    setting = getattr(tokenizer.config, "lowercase", None)
    return setting is not False if tokenizer.type_name == "wordpiece" else bool(setting)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER with jiwer: edits summed over utterances, divided by reference words / characters."""
    import jiwer

    if not references:
        raise DataError("no utterances to score")
    return {"wer": float(jiwer.wer(list(references), list(hypotheses))),
            "cer": float(jiwer.cer(list(references), list(hypotheses)))}


# ---------------------------------------------------------------- batches


def collate_speech(examples: Sequence[dict[str, Any]], ids: dict[str, int]) -> dict[str, Any]:
    """Right-pad features (zeros) and transcripts: ``input_features``, ``feature_mask``, and with transcripts
    ``decoder_input_ids`` (``[bos] + text``), ``decoder_attention_mask``, ``lm_labels`` (``text + [eos]``,
    -100 on padding) and ``references`` (the transcripts as text)."""
    from modaloom.batch import IGNORE_INDEX

    frames = max(len(e["features"]) for e in examples)
    bins = examples[0]["features"].shape[1]
    features = np.zeros((len(examples), frames, bins), dtype=np.float32)
    feature_mask = np.zeros((len(examples), frames), dtype=np.int64)
    for row, e in enumerate(examples):
        features[row, :len(e["features"])] = e["features"]
        feature_mask[row, :len(e["features"])] = 1
    batch: dict[str, Any] = {"input_features": torch.from_numpy(features),
                             "feature_mask": torch.from_numpy(feature_mask),
                             "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}
    if "label" not in examples[0]:
        return batch
    width = max(len(e["text_ids"]) for e in examples) + 1
    inputs = np.full((len(examples), width), ids["pad"], dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    for row, e in enumerate(examples):
        n = len(e["text_ids"]) + 1
        inputs[row, :n] = [ids["bos"], *e["text_ids"]]
        labels[row, :n] = [*e["text_ids"], ids["eos"]]
        mask[row, :n] = 1
    batch.update(decoder_input_ids=torch.from_numpy(inputs), decoder_attention_mask=torch.from_numpy(mask),
                 lm_labels=torch.from_numpy(labels), references=[e["label"] for e in examples])
    return batch


@dataclass
class SpeechLoader(MemoryLoader):
    """``text_io.MemoryLoader`` over utterances: batches of padded features and decoder ids; ``length`` is the
    number of feature frames."""

    ids: dict[str, int] = field(default_factory=dict)  # pad, bos, eos

    def length(self, example: dict[str, Any]) -> int:
        return len(example["features"])

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_speech(examples, self.ids)


# ---------------------------------------------------------------- the task


@register("task", "speech_to_text")
class SpeechToTextTask(FinetuneTask):
    """Speech recognition on an encoder-decoder (S2T): filterbanks in, transcript out, WER / CER."""

    name = "speech_to_text"
    Options = SpeechToTextOptions  # its task.<key> options (docs/config-reference.md)
    selection_metric: ClassVar[str] = "wer"
    lower_is_better: ClassVar[tuple[str, ...]] = ("loss", "wer", "cer")
    kept_targets: ClassVar[tuple[str, ...]] = ("lm",)  # the decoder's lm head is the model's own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(SpeechToTextOptions, dict(self.inputs_.options), path="task")
        self.truncated: dict[str, dict[str, int]] = {"audio": {}, "text": {}}
        self.ids: dict[str, int] = {}

    # ---- model and tokenizer
    def check_model(self) -> None:
        """An encoder-decoder whose embedding is ``speech``; keep its decoder-side lm head (add one if none)."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = self.cfg.model
        if model.decoder is None or model.tgt_embedding is None or "speech" not in model.embedding.parts:
            raise ConfigError(f"task {self.name} needs an encoder-decoder model whose embedding has the speech part "
                              f"(e.g. --config s2t/small); this one has embedding parts {model.embedding.parts} and "
                              f"{'a' if model.decoder is not None else 'no'} decoder")
        section = to_dict(model)
        heads = [t for t in section["targets"] if t.get("type") == "lm" and t.get("source") != "encoder"]
        section["targets"] = heads[:1] or [dict(DEFAULT_LM_TARGET)]
        self.cfg.model = build(ModelConfig, section, Source(), "model")

    def set_tokenizer(self, tokenizer: Any, where: str) -> None:
        """The decoder's tokenizer, its pad / bos / eos ids, checked against the target embedding."""
        self.tokenizer = tokenizer
        self.ids = {"pad": tokenizer.special_id("pad", self.name), "bos": tokenizer.special_id("bos", self.name),
                    "eos": tokenizer.special_id("eos", self.name)}
        check_vocabulary(self.cfg, tokenizer, where, self.cfg.model.tgt_embedding)

    def prepare(self) -> None:
        cfg, paths, given = self.cfg, self.paths, self.inputs_.overridden
        self.check_model()
        tokenizer, where = resolve_tokenizer(paths.init_from, self.inputs_.vocab)
        if paths.init_from is None:  # a new model: its decoder vocabulary is the tokenizer's
            if "model.tgt_embedding.vocab_size" not in given:
                cfg.model.tgt_embedding.vocab_size = int(tokenizer.vocab_size)
            if "model.tgt_embedding.pad_id" not in given:
                cfg.model.tgt_embedding.pad_id = tokenizer.special_id("pad", self.name)
        self.set_tokenizer(tokenizer, where)
        if cfg.data.seq_length < 2:
            raise ConfigError(f"data.seq_length {cfg.data.seq_length} leaves no room for a transcript")
        self.train_examples = self.examples(paths.data, True, "train")
        self.dev_examples = self.examples(paths.eval_data, True, "dev") if paths.eval_data else None
        self.set_steps(len(self.train_examples))

    # ---- data
    def max_frames(self) -> int:
        return min(self.options.max_audio_frames, frames_admitted(self.cfg.model.embedding))

    def examples(self, path: Path, need_text: bool, what: str) -> list[dict[str, Any]]:
        """Features and token ids of a file's utterances; truncations counted under ``what``."""
        from modaloom.data.audio import AudioFeatures

        assert self.tokenizer is not None
        utterances = read_utterances(path, need_text)
        extractor = AudioFeatures(self.options.sample_rate, int(self.cfg.model.embedding.audio_feature_size),
                                  self.options.normalize)
        labelled = all(u.text is not None for u in utterances)
        texts = self.tokenizer.encode_batch([u.text for u in utterances]) if labelled else []
        limit, max_text = self.max_frames(), self.cfg.data.seq_length - 1
        cut_audio = cut_text = 0
        out = []
        for i, utterance in enumerate(utterances):
            features = utterance_features(utterance, extractor)
            if len(features) > limit:
                features, cut_audio = features[:limit], cut_audio + 1
            example: dict[str, Any] = {"features": features, "index": i}
            if labelled:
                ids = list(texts[i])
                if not ids:
                    raise DataError(f"{utterance.where}: transcript {utterance.text!r} has no tokens")
                if len(ids) > max_text:
                    ids, cut_text = ids[:max_text], cut_text + 1
                example.update(text_ids=ids, label=utterance.text)
            out.append(example)
        self.truncated["audio"][what], self.truncated["text"][what] = cut_audio, cut_text
        if cut_audio:
            print(f"modaloom {self.name}: {cut_audio} of {len(out)} utterances of {path} were longer than {limit} "
                  f"frames ({limit / 100:.1f} s) and keep their first {limit}", file=sys.stderr)
        if cut_text:
            print(f"modaloom {self.name}: {cut_text} of {len(out)} transcripts of {path} were longer than "
                  f"{max_text} tokens (data.seq_length - 1) and keep their first {max_text}", file=sys.stderr)
        return out

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> SpeechLoader:
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        return SpeechLoader(examples, self.cfg.train.batch_size, self.ids["pad"], shuffle=train,
                            seed=self.cfg.train.seed, rank=rank, world_size=world, ids=self.ids, group_by_length=self.cfg.train.group_by_length)

    def test_loader(self, path: Path) -> SpeechLoader:
        return self.loader(self.examples(path, True, "test"), False)

    def input_loader(self, path: Path) -> SpeechLoader:
        """Batches of a file to transcribe or evaluate (transcripts kept when every line has one)."""
        return self.loader(self.examples(path, False, "input"), False)

    def data_description(self) -> str:
        seconds = sum(len(e["features"]) for e in self.train_examples) / 100
        return (f"{len(self.train_examples)} utterances ({seconds / 60:.1f} min) in {self.paths.data}, "
                f"{self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "sample_rate": self.options.sample_rate,
                "normalize": self.options.normalize}

    # ---- model steps
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output = model({k: v for k, v in batch.items() if k not in ("index", "references")})
        return output.loss, dict(output.metrics)

    def generation_config(self) -> Any:
        from modaloom.generation import GenerationConfig

        return GenerationConfig(max_new_tokens=self.options.max_new_tokens or self.cfg.data.seq_length,
                                num_beams=self.options.num_beams, length_penalty=self.options.length_penalty,
                                eos_token_id=self.ids["eos"], pad_token_id=self.ids["pad"],
                                decoder_start_token_id=self.ids["bos"])

    def transcribe(self, model: Any, batch: dict[str, Any]) -> list[str]:
        """Beam search (``modaloom.generation.generate``) from the batch's features; special tokens dropped."""
        from modaloom.generation import generate

        assert self.tokenizer is not None
        model = getattr(model, "module", model)
        inputs = {"input_features": batch["input_features"], "feature_mask": batch["feature_mask"]}
        result = generate(model, None, self.generation_config(), encoder_inputs=inputs)
        special = self.tokenizer.all_special_ids()
        return [self.tokenizer.decode([t for t in row if t not in special]).strip() for row in result.token_lists()]

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"index": batch["index"], "hypotheses": self.transcribe(model, batch)}
        if "references" in batch:
            out["references"] = list(batch["references"])
        return out

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        if "references" not in outputs:
            raise DataError("the evaluation file has no transcripts; `evaluate` needs a file with text")
        assert self.tokenizer is not None
        lowercase = tokenizer_lowercases(self.tokenizer)
        references = [normalise_text(t, lowercase) for t in outputs["references"]]
        hypotheses = [normalise_text(t, lowercase) for t in outputs["hypotheses"]]
        return {**error_rates(references, hypotheses), "examples": float(len(references))}

    def prediction_records(self, outputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for i in torch.argsort(outputs["index"]).tolist():
            yield {"text": outputs["hypotheses"][i]}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "seq_length": self.cfg.data.seq_length,
                "truncated": {k: dict(v) for k, v in self.truncated.items()}}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore the options and the tokenizer of a fine-tuned model folder."""
        self.options = build(SpeechToTextOptions, dict(section.get("options") or {}), path="task.options")
        tokenizer, where = resolve_tokenizer(model_dir, "")
        self.set_tokenizer(tokenizer, where)
