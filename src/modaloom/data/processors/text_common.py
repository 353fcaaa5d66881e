"""Helpers shared by the text processors: id streams cut into chunks, special-token checks, masking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from modaloom.config_schema import choice
from modaloom.data.config import MaskingOptions
from modaloom.data.masking import mask_tokens
from modaloom.data.processors.base import Processor, SkipRecord, SourceRecord


def chunks(ids: Sequence[int], size: int, min_length: int = 1) -> Iterator[list[int]]:
    """Consecutive pieces of at most ``size`` ids (a last piece shorter than ``min_length`` is dropped)."""
    for start in range(0, len(ids), size):
        piece = list(ids[start:start + size])
        if len(piece) >= min_length:
            yield piece


def document_ids(record: SourceRecord) -> list[list[int]]:
    """Token ids of each non-empty sentence of a document; SkipRecord when nothing is left."""
    sentences = [ids for ids in (record.encoded or []) if ids]
    if not sentences:
        raise SkipRecord("empty: no tokens after tokenization")
    return sentences


def greedy_groups(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of items grouped in order: an item joins the open group while the lengths fit ``capacity``,
    else it opens the next one (greedy, corpus order; an item longer than ``capacity`` stands alone)."""
    groups: list[list[int]] = []
    used = capacity + 1  # no group open yet
    for index, length in enumerate(lengths):
        if used + length > capacity:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += length
    return groups


PACKING_DOC = ("none: one document (or one piece of a long one) per sequence; documents: whole documents "
               "packed greedily in corpus order, separated by [SEP] (mlm) or eos/bos (lm)")


@dataclass
class MlmOptions:
    """Options of processors that predict masked tokens."""

    masking: MaskingOptions = field(default_factory=MaskingOptions)
    packing: str = choice("none", "none", "documents", doc=PACKING_DOC)


class MaskingMixin(Processor):
    """Adds load-time BERT masking over every non-special position."""

    def _specials(self) -> np.ndarray:
        table = getattr(self, "_special_table", None)
        if table is None:
            assert self.tokenizer is not None
            table = np.zeros(self.tokenizer.vocab_size, dtype=bool)
            table[list(self.tokenizer.all_special_ids())] = True
            self._special_table = table
        return table

    def mask(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(masked input_ids, mlm_labels) with the options' probabilities; special tokens never masked."""
        assert self.tokenizer is not None
        ids = np.asarray(ids, dtype=np.int64)
        masking: MaskingOptions = self.options.masking
        maskable = ~self._specials()[ids]
        word_start = None
        if masking.whole_word or masking.span:
            word_start = self.tokenizer.word_start_table()[ids]
        return mask_tokens(ids, maskable, rng, masking, self.tokenizer.mask_id, self.tokenizer.vocab_size,
                           word_start)
