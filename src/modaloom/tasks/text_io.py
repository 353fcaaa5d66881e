"""Labelled text files for fine-tuning: TencentPretrain's TSV and JSONL rows, read in memory with line numbers.

Formats (chosen by suffix: ``.jsonl``/``.json`` is JSONL, anything else TSV):

- TSV: a header line naming the columns (``label text_a [text_b]``, any order; TencentPretrain's files), then
  one row per line, fields split on tab. A file for prediction may lack ``label`` (``test_nolabel.tsv``).
- JSONL: one object per line with ``text_a`` [, ``text_b``] [, ``label``]; a label may be a string, a number or
  (multi-label) a list.

Every problem is a ``DataError`` naming ``file:line``: an empty line, a row with fewer fields than the
header, malformed JSON, a missing ``text_a``, a missing label where labels are needed.

Tokenization (``encode_pairs``): ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, segment ids 0 then 1.
Truncation policy, documented in docs/tasks.md: a text longer than ``seq_length`` loses tokens from its end;
for a pair, from the end of the longer segment, one token at a time ("longest first", as transformers'
``truncation="longest_first"``); the number of truncated examples is counted and reported.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.errors import DataError

TEXT_COLUMNS = ("text_a", "text_b")


@dataclass
class Row:
    """One example as read: where it came from, its texts and its raw label (None: unlabelled)."""

    where: str  # "file:line"
    text_a: str
    text_b: str | None = None
    label: Any = None


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json")


def read_lines(path: Path) -> list[str]:
    """The file's lines split on \\n, \\r\\n or \\r only: a U+2028 or U+0085 inside a text (JSON keeps
    them raw) is part of the line, as it is for ``json.loads`` and TencentPretrain's readers."""
    try:
        with open(path, encoding="utf-8", newline=None) as fh:
            return [line.rstrip("\n") for line in fh]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def read_rows(path: str | Path, need_label: bool) -> list[Row]:
    """Every example of a TSV or JSONL file; ``need_label``: a row without a label is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines = read_lines(path)
    rows = _read_jsonl(path, lines, need_label) if is_jsonl(path) else _read_tsv(path, lines, need_label)
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def tsv_header(path: Path, lines: list[str], expected: str, need: Sequence[str] = ()) -> list[str]:
    """The column names on a TencentPretrain-style TSV's first line; each of ``need`` must be one of them
    (``expected`` describes the header in errors, e.g. ``label text_a [text_b]``)."""
    if not lines or not lines[0].strip():
        raise DataError(f"{path}:1: the first line must be a header naming the columns ({expected})")
    header = [c.strip() for c in lines[0].split("\t")]
    for column in need:
        if column not in header:
            raise DataError(f"{path}:1: header {header} has no column {column} (expected {expected})")
    return header


def tsv_rows(path: Path, lines: list[str], header: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """``(file:line, {column: field})`` for every line after the header; an empty line, or one with fewer
    fields than the header names, is an error naming the line."""
    for number, line in enumerate(lines[1:], start=2):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line after the header is one example)")
        fields = line.split("\t")
        if len(fields) < len(header):
            raise DataError(f"{where}: {len(fields)} tab-separated field(s), the header names {len(header)} "
                            f"({' '.join(header)})")
        yield where, dict(zip(header, fields, strict=False))


def _read_tsv(path: Path, lines: list[str], need_label: bool) -> list[Row]:
    header = tsv_header(path, lines, "label text_a [text_b]", ("text_a", "label") if need_label else ("text_a",))
    return [Row(where, value["text_a"], value.get("text_b"), value.get("label"))
            for where, value in tsv_rows(path, lines, header)]


def _read_jsonl(path: Path, lines: list[str], need_label: bool) -> list[Row]:
    rows = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON example)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object with text_a [, text_b, label], got "
                            f"{type(value).__name__}")
        if not isinstance(value.get("text_a"), str):
            raise DataError(f"{where}: no string field text_a (keys: {sorted(value)})")
        if value.get("text_b") is not None and not isinstance(value["text_b"], str):
            raise DataError(f"{where}: text_b must be a string, got {type(value['text_b']).__name__}")
        if need_label and value.get("label") is None:
            raise DataError(f"{where}: no field label, which this file needs")
        rows.append(Row(where, value["text_a"], value.get("text_b"), value.get("label")))
    return rows


def read_sentences(path: str | Path) -> list[Row]:
    """Inputs for ``features``: a TSV/JSONL example file, or plain text with one sentence per line."""
    path = Path(path)
    if is_jsonl(path) or path.suffix.lower() == ".tsv":
        return read_rows(path, need_label=False)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty line; every line must hold one sentence")
        rows.append(Row(f"{path}:{number}", line))
    if not rows:
        raise DataError(f"{path}: no sentences")
    return rows


# ---------------------------------------------------------------- tokenization


def truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer segment (``a`` on ties) until both fit ``budget`` tokens."""
    excess = len(a) + len(b) - budget
    if excess <= 0:
        return a, b
    la, lb = len(a), len(b)
    for _ in range(excess):
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    return a[:max(la, 0)], b[:max(lb, 0)]


@dataclass
class Encoded:
    """Token ids and segment ids of every example, and how many were truncated."""

    input_ids: list[list[int]]
    segment_ids: list[list[int]]
    truncated: int = 0


def encode_pairs(tokenizer: Any, rows: Sequence[Row], seq_length: int) -> Encoded:
    """``[CLS] a [SEP] (b [SEP])`` per row, truncated longest-first to ``seq_length`` tokens."""
    cls_id, sep_id = tokenizer.special_id("cls", "classification"), tokenizer.special_id("sep", "classification")
    first = tokenizer.encode_batch([r.text_a for r in rows])
    pair_rows = [i for i, r in enumerate(rows) if r.text_b]
    seconds: dict[int, list[int]] = dict(zip(pair_rows, tokenizer.encode_batch([rows[i].text_b for i in pair_rows]),
                                             strict=True))
    out = Encoded([], [])
    for i, a in enumerate(first):
        b = seconds.get(i)
        budget = seq_length - (3 if b is not None else 2)
        if budget < 2:
            raise DataError(f"seq_length {seq_length} leaves no room for text; raise data.seq_length")
        trimmed_a, trimmed_b = truncate_longest_first(list(a), list(b or []), budget)
        if len(trimmed_a) + len(trimmed_b) < len(a) + len(b or []):
            out.truncated += 1
        ids = [cls_id, *trimmed_a, sep_id]
        segments = [0] * len(ids)
        if b is not None:
            ids += [*trimmed_b, sep_id]
            segments += [1] * (len(trimmed_b) + 1)
        out.input_ids.append(ids)
        out.segment_ids.append(segments)
    return out


# ---------------------------------------------------------------- batches


def padded_width(longest: int, multiple: int = 1) -> int:
    """``longest`` rounded up to a multiple of ``multiple`` (see ``MemoryLoader.pad_multiple``)."""
    return -(-longest // multiple) * multiple if multiple > 1 else longest


def collate(examples: Sequence[dict[str, Any]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch (rounded up to ``multiple``): input_ids (pad_id), segment_ids
    (0), attention_mask, labels."""
    width = padded_width(max(len(e["input_ids"]) for e in examples), multiple)
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    seg = np.zeros((len(examples), width), dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = e["input_ids"]
        seg[row, :n] = e["segment_ids"]
        mask[row, :n] = 1
    batch = {"input_ids": torch.from_numpy(ids), "segment_ids": torch.from_numpy(seg),
             "attention_mask": torch.from_numpy(mask),
             "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}
    if "label" in examples[0]:
        batch["task_labels"] = torch.as_tensor(np.stack([np.asarray(e["label"]) for e in examples]))
    return batch


GROUP_BATCHES = 50  # group_by_length sorts pools of this many batches by length


@dataclass
class MemoryLoader:
    """Batches of in-memory examples: this rank's share (every ``world_size``-th), shuffled per epoch with
    ``seed + epoch`` when ``shuffle`` (the same order on every restart, so a resumed run replays exactly).

    ``group_by_length`` (with ``shuffle``): the shuffled order is cut into pools of ``GROUP_BATCHES`` batches,
    each pool sorted by example length and cut into batches, and the batches shuffled, so a batch pads to a
    length near its examples' own (fairseq's and transformers' ``group_by_length``); still seeded per epoch.
    Subclasses change ``collate_batch`` (and ``length``), not the order."""

    examples: list[dict[str, Any]]
    batch_size: int
    pad_id: int
    shuffle: bool = False
    seed: int = 7
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    group_by_length: bool = False
    # batches pad to a multiple of this: under CPU autocast oneDNN caches a matmul primitive (with its buffers)
    # per shape, and padding to the longest example meets every length up to seq_length (a bf16 fine-tuning of
    # the demo's tiny BERT peaked at 951 MB RSS padded to the longest, 521 MB to a multiple of 16; fp32: 498)
    pad_multiple: int = 1
    epoch: int = field(default=0, init=False)  # the next epoch
    batch_epoch: int = field(default=0, init=False)  # the epoch of the batches being yielded

    def __post_init__(self) -> None:
        self.examples = self.examples[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def length(self, example: dict[str, Any]) -> int:
        """The size ``group_by_length`` sorts by: the example's token count."""
        return len(example.get("input_ids") or ())

    def order(self, rng: random.Random) -> list[list[int]]:
        """This epoch's batches as lists of example positions."""
        order = list(range(len(self.examples)))
        size = self.batch_size
        if not self.shuffle:
            return [order[i:i + size] for i in range(0, len(order), size)]
        rng.shuffle(order)
        if not self.group_by_length:
            return [order[i:i + size] for i in range(0, len(order), size)]
        batches: list[list[int]] = []
        pool = size * GROUP_BATCHES
        for start in range(0, len(order), pool):
            ranked = sorted(order[start:start + pool], key=lambda i: self.length(self.examples[i]), reverse=True)
            batches += [ranked[i:i + size] for i in range(0, len(ranked), size)]
        rng.shuffle(batches)
        return batches

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """This epoch's batches of examples (a short one dropped with ``drop_last``); advances the epoch."""
        self.batch_epoch, self.epoch = self.epoch, self.epoch + 1
        for chunk in self.order(random.Random(self.seed + self.batch_epoch)):
            if self.drop_last and len(chunk) < self.batch_size:
                continue
            yield [self.examples[i] for i in chunk]

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """One batch of tensors from its examples."""
        return collate(examples, self.pad_id, self.pad_multiple)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for examples in self.batches():
            yield self.collate_batch(examples)
