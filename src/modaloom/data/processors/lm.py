"""Decoder-style text processors: ``lm`` (next token), ``bilm`` (forward + backward), ``prefixlm``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modaloom.batch import IGNORE_INDEX
from modaloom.config_schema import choice
from modaloom.data.processors.base import ChunkResult, Processor, SkipRecord, SourceRecord
from modaloom.data.processors.text_common import chunks, greedy_groups
from modaloom.data.storage import FieldSpec, Skip
from modaloom.registry import register


@dataclass
class LmOptions:
    """How documents (bos + tokens + eos) are laid out in stored sequences."""

    packing: str = choice("stream", "stream", "documents", "none",
                          doc="stream: concatenated and cut anywhere (GPT-2); documents: whole documents packed "
                              "greedily; none: one document (or piece of a long one) per sequence")


@register("processor", "lm")
class LmProcessor(Processor):
    """Lines (each one document) -> bos + tokens + eos in pieces of at most seq_length + 1.

    ``packing: stream`` (the default, as GPT-2): the documents of a chunk of input are concatenated and cut
    every seq_length + 1 tokens, so no token is lost and only the last piece of a chunk can be shorter;
    ``documents``: whole documents are packed greedily in input order, a document is cut only when it is
    longer than a sequence; ``none``: each document on its own. At load time ``lm_labels`` is the input
    shifted by one (across a document boundary: eos predicts the next bos, as in GPT-2's stream).
    """

    name = "lm"
    Options = LmOptions
    input_kind = "line"
    required_tokens = ("bos", "eos", "pad")
    extra = 1  # tokens beyond seq_length stored per record (1: the shifted label)
    packed_length_delta = -1  # an example is one token shorter than its stored ids (the label shift)

    def texts(self, record: SourceRecord) -> list[str]:
        return [record.value]

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        return ()  # records are made per chunk, see process_chunk

    def process_chunk(self, records: Sequence[SourceRecord], chunk_index: int) -> ChunkResult:
        result = super().process_chunk(records, chunk_index)  # tokenizes; skips are recomputed below
        assert self.tokenizer is not None
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        documents: list[list[int]] = []
        result.skips.clear()
        for record in records:
            ids = (record.encoded or [[]])[0]
            if not ids:
                result.skips.append(Skip(record.file, record.line, "empty: no tokens after tokenization"))
                continue
            documents.append([bos, *ids, eos])
        for piece in self.sequences(documents):
            result.batch.add({"input_ids": piece})
        return result

    def sequences(self, documents: list[list[int]]) -> Iterator[list[int]]:
        """Stored sequences of a chunk's documents under the ``packing`` option (see the class docstring)."""
        size, shortest = self.seq_length + self.extra, self.extra + 1
        if self.options.packing == "stream":
            yield from chunks([t for d in documents for t in d], size, min_length=shortest)
            return
        pieces = [piece for d in documents for piece in chunks(d, size)]
        if self.options.packing == "none":
            yield from (piece for piece in pieces if len(piece) >= shortest)
            return
        for group in greedy_groups([len(p) for p in pieces], size):
            packed = [t for i in group for t in pieces[i]]
            if len(packed) >= shortest:
                yield packed

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        return {"input_ids": ids[:-1], "lm_labels": ids[1:]}


@register("processor", "bilm")
class BilmProcessor(LmProcessor):
    """Like ``lm``; each example also predicts the previous token (``bilm_labels_backward``), as ELMo."""

    name = "bilm"
    extra = 2
    packed_length_delta = -2

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        return {"input_ids": ids[1:-1], "lm_labels": ids[2:], "bilm_labels_backward": ids[:-2]}


@register("processor", "prefixlm")
class PrefixLmProcessor(Processor):
    """Lines ``source<TAB>target`` -> [CLS] source [SEP] target [SEP]; the source is the visible prefix
    (``prefix_lengths``) and only target tokens are predicted. Too-long pairs are truncated and counted."""

    name = "prefixlm"
    input_kind = "line"
    required_tokens = ("cls", "sep", "pad")

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"input_ids": FieldSpec(self.id_dtype), "prefix_length": FieldSpec("uint32", "scalar")}

    def texts(self, record: SourceRecord) -> list[str]:
        parts = record.value.split("\t")
        return parts[:2] if len(parts) >= 2 else []

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        assert self.tokenizer is not None
        if "\t" not in record.value:
            raise SkipRecord("missing_tab: expected source<TAB>target")
        source, target = record.encoded or ([], [])
        if not source or not target:
            raise SkipRecord("empty: source or target has no tokens")
        budget = self.seq_length - 3
        if len(source) + len(target) > budget:
            self.count("truncated")
            keep_source = max(budget // 2, budget - len(target))
            source = source[:keep_source]
            target = target[:budget - len(source)]
        ids = [self.tokenizer.cls_id, *source, self.tokenizer.sep_id, *target, self.tokenizer.sep_id]
        yield {"input_ids": ids, "prefix_length": len(source) + 2}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        prefix = int(stored["prefix_length"])
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        labels[prefix - 1:-1] = ids[prefix:]  # position i predicts token i + 1, from the last prefix token on
        segment = np.zeros(len(ids), dtype=np.int64)
        segment[prefix:] = 1
        return {"input_ids": ids, "lm_labels": labels, "segment_ids": segment,
                "prefix_lengths": np.asarray(prefix, dtype=np.int64)}
