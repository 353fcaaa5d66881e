"""Encoder-only text processors: ``bert`` (MLM + next sentence), ``albert`` (MLM + sentence order),
``mlm`` (MLM only), ``cls`` (labelled text), ``cls_mlm`` (labelled text + MLM)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modaloom.config_schema import choice
from modaloom.data.config import MaskingOptions
from modaloom.data.processors.base import SkipRecord, SourceRecord
from modaloom.data.processors.text_common import MaskingMixin, MlmOptions, chunks, document_ids, greedy_groups
from modaloom.data.storage import FieldSpec
from modaloom.errors import ConfigError
from modaloom.registry import register


@dataclass
class SentencePairOptions:
    masking: MaskingOptions = field(default_factory=MaskingOptions)
    short_seq_prob: float = 0.1  # how often a shorter target length is drawn (as Google's BERT)
    dup_factor: int = 1  # instances drawn per document (dynamic masking makes >1 rarely useful)
    # A pair sequence holds one A/B pair and one sp label at [CLS]: several documents in it would give
    # the label no meaning, so only "none"; "documents" is refused with the way to pack (mlm, as RoBERTa).
    packing: str = choice("none", "none", "documents", doc="bert/albert: none only (one pair per sequence)")

    def validate(self) -> None:
        if self.packing != "none":
            raise ConfigError(
                f"packing={self.packing!r}: bert/albert sequences are one sentence pair whose sp label is "
                "read at [CLS], so documents cannot be packed together; use --processor mlm with "
                "--option packing=documents (RoBERTa's FULL-SENTENCES: no next-sentence or order label)")


def segment_ids_for(length: int, first_length: int) -> np.ndarray:
    seg = np.zeros(length, dtype=np.int64)
    seg[first_length:] = 1
    return seg


@register("processor", "bert")
class BertProcessor(MaskingMixin):
    """Documents (one sentence per line, blank line between documents) -> [CLS] A [SEP] B [SEP] pairs.

    B is the true continuation or, with probability 0.5, text from another document of the same chunk
    (``sp_labels`` 1 = random next). Pairs are built as in Google's BERT (target length, random split).
    """

    name = "bert"
    Options = SentencePairOptions
    input_kind = "document"
    required_tokens = ("cls", "sep", "mask", "pad")
    sentence_order = False  # albert: B is always the continuation; label 1 = A and B swapped

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"input_ids": FieldSpec(self.id_dtype), "first_length": FieldSpec("uint32", "scalar"),
                "sp_label": FieldSpec("uint8", "scalar")}

    def texts(self, record: SourceRecord) -> list[str]:
        return list(record.value)

    def _random_other_document(self, record: SourceRecord) -> list[list[int]]:
        """Sentences of another document of the chunk, drawn at random (a few tries, then none)."""
        chunk = self.current_chunk
        for _ in range(10):
            other = chunk[int(self.rng.integers(len(chunk)))] if chunk else record
            if other is not record:
                sentences = [ids for ids in (other.encoded or []) if ids]
                if sentences:
                    return sentences
        return []

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        sentences = document_ids(record)
        if len(sentences) < 2 and self.sentence_order:
            raise SkipRecord("single_sentence: sentence order needs two sentences")
        for _ in range(self.options.dup_factor):
            yield from self._instances(record, sentences)

    def _instances(self, record: SourceRecord, sentences: list[list[int]]) -> Iterable[dict[str, Any]]:
        assert self.tokenizer is not None
        cls_id, sep_id = self.tokenizer.cls_id, self.tokenizer.sep_id
        max_tokens = self.seq_length - 3
        rng = self.rng
        target = max_tokens if rng.random() >= self.options.short_seq_prob else int(rng.integers(2, max_tokens + 1))
        current: list[list[int]] = []
        length = 0
        i = 0
        while i < len(sentences):
            current.append(sentences[i])
            length += len(sentences[i])
            if i == len(sentences) - 1 or length >= target:
                if current:
                    a_end = 1 if len(current) < 2 else int(rng.integers(1, len(current)))
                    a = [t for s in current[:a_end] for t in s]
                    b: list[int] = []
                    label = 0
                    if self.sentence_order:
                        b = [t for s in current[a_end:] for t in s]
                        if b and rng.random() < 0.5:
                            a, b, label = b, a, 1
                    elif len(current) == 1 or rng.random() < 0.5:
                        label = 1
                        other = self._random_other_document(record)
                        if other:
                            start = int(rng.integers(len(other)))
                            b = [t for s in other[start:] for t in s][:max_tokens]
                        # the unused sentences of this document are put back
                        i -= len(current) - a_end
                    else:
                        b = [t for s in current[a_end:] for t in s]
                    if not b:  # no second segment possible: fall back to the true continuation
                        label = 0
                    a, b = _truncate_pair(a, b, max_tokens, rng)
                    if a and b:
                        ids = [cls_id, *a, sep_id, *b, sep_id]
                        yield {"input_ids": ids, "first_length": len(a) + 2, "sp_label": label}
                current, length = [], 0
            i += 1

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        input_ids, mlm_labels = self.mask(stored["input_ids"], rng)
        return {"input_ids": input_ids, "mlm_labels": mlm_labels,
                "segment_ids": segment_ids_for(len(input_ids), int(stored["first_length"])),
                "sp_labels": np.asarray(int(stored["sp_label"]), dtype=np.int64)}


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Trim the longer segment, from the front or the back at random, until both fit (as Google's BERT).

    Linear in the pair's length, and the same result and random draws as trimming one token at a time:
    each removed token takes one ``rng.random()`` (< 0.5: from the front). Which segment loses each token
    is known in advance: the longer one until both have the same length (a tie trims ``b``), then ``b``
    and ``a`` in turn; so all draws are taken at once and only the counts per segment and side matter.
    """
    excess = len(a) + len(b) - max_tokens
    if excess <= 0:
        return list(a), list(b)
    draws = rng.random(excess)
    gap = abs(len(a) - len(b))
    first = min(excess, gap)  # steps that trim the longer segment only
    on_b = np.zeros(excess, dtype=bool)
    on_b[:first] = len(b) >= len(a)
    on_b[first:] = np.arange(excess - first) % 2 == 0  # equal lengths: b first (a tie trims b), then a
    front = draws < 0.5
    trimmed = []
    for segment, mine in ((a, ~on_b), (b, on_b)):
        from_front = int(np.count_nonzero(front & mine))
        from_back = int(np.count_nonzero(mine)) - from_front
        trimmed.append(list(segment[from_front:len(segment) - from_back]))
    return trimmed[0], trimmed[1]


@register("processor", "albert")
class AlbertProcessor(BertProcessor):
    """Like ``bert`` but the second segment always continues the first; ``sp_labels`` 1 = swapped order."""

    name = "albert"
    sentence_order = True


@register("processor", "mlm")
class MlmProcessor(MaskingMixin):
    """Documents -> [CLS] tokens [SEP] pieces of up to seq_length (longer documents are split, not cut)."""

    name = "mlm"
    Options = MlmOptions
    input_kind = "document"
    required_tokens = ("cls", "sep", "mask", "pad")

    def texts(self, record: SourceRecord) -> list[str]:
        return list(record.value)

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        assert self.tokenizer is not None
        tokens = [t for s in document_ids(record) for t in s]
        for piece in chunks(tokens, self.seq_length - 2):
            yield {"input_ids": [self.tokenizer.cls_id, *piece, self.tokenizer.sep_id]}

    def finish_chunk(self, outputs: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """``packing: documents``: [CLS] d1 [SEP] d2 [SEP] ... in one record while they fit seq_length.

        Each stored piece ([CLS] piece [SEP]) costs its length minus the [CLS] the record already has, so
        a record never exceeds seq_length; packing is per input chunk (workers see one chunk each).
        """
        if self.options.packing == "none":
            return outputs
        pieces = [list(out["input_ids"])[1:] for out in outputs]  # piece + its [SEP]
        assert self.tokenizer is not None
        cls_id = self.tokenizer.cls_id
        return [{"input_ids": [cls_id, *(t for i in group for t in pieces[i])]}
                for group in greedy_groups([len(p) for p in pieces], self.seq_length - 1)]

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        input_ids, mlm_labels = self.mask(stored["input_ids"], rng)
        return {"input_ids": input_ids, "mlm_labels": mlm_labels,
                "segment_ids": np.zeros(len(input_ids), dtype=np.int64)}


@dataclass
class ClsOptions:
    masking: MaskingOptions = field(default_factory=MaskingOptions)
    label_column: str = "label"
    text_columns: list[str] = field(default_factory=lambda: ["text_a", "text_b"])


@register("processor", "cls")
class ClsProcessor(MaskingMixin):
    """TSV/JSONL rows with ``label``, ``text_a`` [, ``text_b``] -> [CLS] a [SEP] (b [SEP]) + integer label.

    Too-long texts are truncated (longer segment first) and counted in the manifest as ``truncated``."""

    name = "cls"
    Options = ClsOptions
    input_kind = "row"
    required_tokens = ("cls", "sep", "pad")
    with_mlm = False

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"input_ids": FieldSpec(self.id_dtype), "first_length": FieldSpec("uint32", "scalar"),
                "label": FieldSpec("int64", "scalar")}

    def texts(self, record: SourceRecord) -> list[str]:
        row = record.value
        return [row[c] for c in self.options.text_columns if row.get(c) not in (None, "")]

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        assert self.tokenizer is not None
        row = record.value
        raw = row.get(self.options.label_column)
        if raw is None:
            raise SkipRecord(f"missing_label: no column {self.options.label_column!r}")
        try:
            label = int(str(raw).strip())
        except ValueError:
            raise SkipRecord(f"bad_label: {str(raw)[:40]!r} is not an integer") from None
        segments = list(record.encoded or [])
        if not segments or not any(segments):
            raise SkipRecord("empty: no text")
        a = segments[0]
        b = segments[1] if len(segments) > 1 else []
        budget = self.seq_length - (3 if b else 2)
        if len(a) + len(b) > budget:
            self.count("truncated")
            while len(a) + len(b) > budget:
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
        ids = [self.tokenizer.cls_id, *a, self.tokenizer.sep_id]
        if b:
            ids += [*b, self.tokenizer.sep_id]
        yield {"input_ids": ids, "first_length": len(a) + 2, "label": label}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        out = {"segment_ids": segment_ids_for(len(ids), int(stored["first_length"])),
               "labels": np.asarray(int(stored["label"]), dtype=np.int64)}
        if self.with_mlm:
            out["input_ids"], out["mlm_labels"] = self.mask(ids, rng)
        else:
            out["input_ids"] = ids
        return out


@register("processor", "cls_mlm")
class ClsMlmProcessor(ClsProcessor):
    """``cls`` plus masked-token prediction on the same text."""

    name = "cls_mlm"
    required_tokens = ("cls", "sep", "mask", "pad")
    with_mlm = True
