"""Encoder-decoder text processors: ``t5`` (span corruption), ``bart`` (text infilling + sentence
permutation), ``gsg`` (PEGASUS gap sentences) and ``mt`` (parallel text).

Each example holds ``input_ids`` (encoder), ``decoder_input_ids`` = start + target[:-1] and
``lm_labels`` = target (already shifted), where target ends with eos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modaloom.config_schema import choice
from modaloom.data.masking import bart_text_infilling, permute_sentences, t5_span_corruption
from modaloom.data.processors.base import ChunkResult, Processor, SkipRecord, SourceRecord
from modaloom.data.processors.text_common import chunks
from modaloom.data.storage import FieldSpec, Skip
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register


class Seq2SeqBase(Processor):
    """Shared decoder-side helpers."""

    def decoder_start(self) -> int:
        """bos when the vocabulary has one, else pad (as T5 does)."""
        assert self.tokenizer is not None
        bos = self.tokenizer.optional_id("bos")
        return bos if bos is not None else self.tokenizer.pad_id

    def seq2seq_example(self, inputs: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        assert self.tokenizer is not None
        eos = self.tokenizer.eos_id
        inputs = np.asarray(inputs, dtype=np.int64)[:self.seq_length]
        target = np.concatenate([np.asarray(target, dtype=np.int64)[:self.seq_length - 1], [eos]])
        decoder_input = np.concatenate([[self.decoder_start()], target[:-1]])
        return {"input_ids": inputs, "decoder_input_ids": decoder_input, "lm_labels": target}


@dataclass
class T5Options:
    noise_density: float = 0.15
    mean_span_length: float = 3.0


@register("processor", "t5")
class T5Processor(Seq2SeqBase):
    """Lines (documents) streamed with eos between them, cut into pieces; at load time random spans
    (15%, mean length 3) are replaced by sentinels in the input and listed after them in the target."""

    name = "t5"
    Options = T5Options
    input_kind = "line"
    required_tokens = ("eos", "pad")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        assert self.tokenizer is not None
        self.sentinels = self.tokenizer.sentinel_ids
        spans_needed = int(round(self.seq_length * self.options.noise_density / self.options.mean_span_length)) + 1
        if len(self.sentinels) < spans_needed:
            raise DataError(
                f"processor 't5' needs {spans_needed} sentinel tokens (<extra_id_0>... or [unused1]...) for "
                f"seq_length {self.seq_length}; vocabulary {self.tokenizer.config.vocab} has {len(self.sentinels)}")

    def texts(self, record: SourceRecord) -> list[str]:
        return [record.value]

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        return ()

    def process_chunk(self, records: Sequence[SourceRecord], chunk_index: int) -> ChunkResult:
        result = super().process_chunk(records, chunk_index)
        assert self.tokenizer is not None
        eos = self.tokenizer.eos_id
        result.skips.clear()
        stream: list[int] = []
        for record in records:
            ids = (record.encoded or [[]])[0]
            if not ids:
                result.skips.append(Skip(record.file, record.line, "empty: no tokens after tokenization"))
                continue
            stream += [*ids, eos]
        for piece in chunks(stream, self.seq_length - 1, min_length=2):
            result.batch.add({"input_ids": piece})
        return result

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert self.tokenizer is not None
        inputs, targets = t5_span_corruption(stored["input_ids"], rng, self.sentinels,
                                             self.options.noise_density, self.options.mean_span_length)
        inputs = np.concatenate([inputs, [self.tokenizer.eos_id]])
        return self.seq2seq_example(inputs, targets)


@dataclass
class BartOptions:
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = True


class SentenceChunks(Seq2SeqBase):
    """Stores documents as pieces of whole sentences (``sentence_ends`` marks where each one ends)."""

    input_kind = "document"

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"input_ids": FieldSpec(self.id_dtype), "sentence_ends": FieldSpec("uint32")}

    def texts(self, record: SourceRecord) -> list[str]:
        return list(record.value)

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        budget = self.seq_length - 2
        sentences: list[list[int]] = []
        for ids in record.encoded or []:
            sentences.extend(chunks(ids, budget))  # a sentence longer than the budget is split
        if not sentences:
            raise SkipRecord("empty: no tokens after tokenization")
        piece: list[list[int]] = []
        for sentence in sentences:
            if piece and sum(map(len, piece)) + len(sentence) > budget:
                yield self._record(piece)
                piece = []
            piece.append(sentence)
        if piece:
            yield self._record(piece)

    @staticmethod
    def _record(sentences: list[list[int]]) -> dict[str, Any]:
        return {"input_ids": [t for s in sentences for t in s],
                "sentence_ends": np.cumsum([len(s) for s in sentences])}

    @staticmethod
    def sentences(stored: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        return np.split(ids, np.asarray(stored["sentence_ends"], dtype=np.int64)[:-1])


@register("processor", "bart")
class BartProcessor(SentenceChunks):
    """Documents -> pieces of sentences; at load time sentences are permuted and Poisson(3) spans covering
    30% of tokens each collapse to one mask; the decoder reconstructs the original."""

    name = "bart"
    Options = BartOptions
    required_tokens = ("mask", "eos", "pad")

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert self.tokenizer is not None
        sentences = self.sentences(stored)
        original = np.concatenate(sentences)
        if self.options.permute_sentences and len(sentences) > 1:
            sentences = permute_sentences(sentences, rng)
        noised = bart_text_infilling(np.concatenate(sentences), rng, self.tokenizer.mask_id,
                                     self.options.mask_ratio, self.options.poisson_lambda)
        inputs = np.concatenate([[self.decoder_start()], noised[:self.seq_length - 2], [self.tokenizer.eos_id]])
        return self.seq2seq_example(inputs, original)


@dataclass
class GsgOptions:
    gap_ratio: float = 0.3
    selection: str = choice("random", "random", "lead")

    def validate(self) -> None:
        if not 0.0 < self.gap_ratio < 1.0:
            raise ConfigError(f"gap_ratio must be in (0, 1), got {self.gap_ratio}")


@register("processor", "gsg")
class GsgProcessor(SentenceChunks):
    """PEGASUS gap sentences: about 30% of a piece's sentences (at random, or the first ones) are each
    replaced by one mask token in the input and generated, in order, as the target."""

    name = "gsg"
    Options = GsgOptions
    required_tokens = ("mask", "eos", "pad")

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert self.tokenizer is not None
        sentences = self.sentences(stored)
        count = max(1, int(round(len(sentences) * self.options.gap_ratio)))
        if self.options.selection == "lead":
            gaps = set(range(count))
        else:
            gaps = set(rng.choice(len(sentences), size=count, replace=False).tolist())
        mask = np.asarray([self.tokenizer.mask_id], dtype=np.int64)
        inputs = np.concatenate([mask if i in gaps else s for i, s in enumerate(sentences)]
                                + [[self.tokenizer.eos_id]])
        target = np.concatenate([s for i, s in enumerate(sentences) if i in gaps])
        return self.seq2seq_example(inputs, target)


@register("processor", "mt")
class MtProcessor(Seq2SeqBase):
    """Lines ``source<TAB>target`` (one shared tokenizer) -> source + eos and the target to generate.
    Sides longer than seq_length are truncated and counted."""

    name = "mt"
    input_kind = "line"
    required_tokens = ("eos", "pad")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"input_ids": FieldSpec(self.id_dtype), "target_ids": FieldSpec(self.id_dtype)}

    def texts(self, record: SourceRecord) -> list[str]:
        parts = record.value.split("\t")
        return parts[:2] if len(parts) >= 2 else []

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        if "\t" not in record.value:
            raise SkipRecord("missing_tab: expected source<TAB>target")
        source, target = record.encoded or ([], [])
        if not source or not target:
            raise SkipRecord("empty: source or target has no tokens")
        if len(source) > self.seq_length - 1 or len(target) > self.seq_length - 1:
            self.count("truncated")
        yield {"input_ids": source[:self.seq_length - 1], "target_ids": target[:self.seq_length - 1]}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        assert self.tokenizer is not None
        inputs = np.concatenate([np.asarray(stored["input_ids"], dtype=np.int64), [self.tokenizer.eos_id]])
        return self.seq2seq_example(inputs, stored["target_ids"])
