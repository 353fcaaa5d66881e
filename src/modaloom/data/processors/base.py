"""The processor interface: how one data type is turned into stored records and back into examples.

A processor runs twice:
- at preprocess time, in worker processes, ``process(record)`` turns one input record (a line, a
  document or a table row) into zero or more stored records (dicts of numpy arrays / scalars);
- at load time, in DataLoader workers, ``make_example(stored, rng)`` turns one stored record into one
  unpadded example holding the batch keys of docs/architecture.md (dynamic masking happens here).

Processors register with ``@register("processor", name)``; ``build_processor`` makes one by name.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modaloom.batch import DECODER_INPUT_IDS, IGNORE_INDEX, INPUT_IDS
from modaloom.config_schema import build, to_dict
from modaloom.data.storage import FieldSpec, RecordBatch, Skip, StoredDataset, token_dtype
from modaloom.errors import ConfigError, DataError
from modaloom.registry import get

if TYPE_CHECKING:
    from modaloom.data.tokenizers import Tokenizer


@dataclass
class SourceRecord:
    """One unit of input handed to ``process``: where it came from and its raw value.

    ``value`` is a str for ``line`` input, a list of sentence strings for ``document`` input (one per line,
    ``lines`` gives each one's line number) and a dict of column -> str for ``row`` input (TSV / JSONL).
    ``encoded`` holds the token ids of ``Processor.texts(record)``, filled in bulk before ``process``.
    """

    file: str
    line: int
    value: Any
    lines: list[int] | None = None
    encoded: list[list[int]] | None = None


class SkipRecord(Exception):  # noqa: N818 - a signal, not an error
    """Raised by ``process`` to skip a record; the reason is recorded in the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk of input records."""

    batch: RecordBatch
    skips: list[Skip]
    counters: dict[str, int]
    inputs: int


@dataclass
class NoOptions:
    """For processors without options."""


class Processor:
    """Base class. Subclasses set ``name``, ``Options``, ``input_kind`` and implement the two halves."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    input_kind: ClassVar[str] = "line"  # line | document | row
    needs_tokenizer: ClassVar[bool] = True
    required_tokens: ClassVar[tuple[str, ...]] = ()  # roles such as "cls", "sep", "mask", "pad"
    pad_values: ClassVar[dict[str, int | float]] = {}

    def __init__(self, tokenizer: Tokenizer | None, seq_length: int, options: Any = None, seed: int = 7):
        if self.needs_tokenizer and tokenizer is None:
            raise ConfigError(f"processor {self.name!r} needs a tokenizer (give --vocab)")
        if seq_length < 4:
            raise ConfigError(f"seq_length must be at least 4, got {seq_length}")
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        self.options = options if options is not None else self.Options()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.current_chunk: Sequence[SourceRecord] = ()
        self.counters: Counter[str] = Counter()
        if tokenizer is not None:
            for role in self.required_tokens:
                tokenizer.special_id(role, needed_by=f"processor {self.name!r}")

    # ---- preprocess time -------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, FieldSpec]:
        """Stored fields and dtypes; the default is one token-id sequence ``input_ids``."""
        return {"input_ids": FieldSpec(self.id_dtype)}

    @property
    def id_dtype(self) -> str:
        return token_dtype(self.tokenizer.vocab_size) if self.tokenizer is not None else "uint32"

    def folder_records(self, root: Path) -> Iterable[SourceRecord]:
        """Records of a corpus given as a directory (e.g. an image folder); override where supported."""
        raise DataError(f"processor {self.name!r} reads corpus files, and {root} is a directory")

    def texts(self, record: SourceRecord) -> list[str]:
        """Texts of a record to tokenize (in bulk, before ``process``); their ids land in ``record.encoded``."""
        return []

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        """One input record -> stored records. Raise SkipRecord(reason) to skip it (recorded)."""
        raise NotImplementedError

    def count(self, event: str, n: int = 1) -> None:
        """Count a non-fatal event (e.g. ``truncated``) for the manifest."""
        self.counters[event] += n

    def process_chunk(self, records: Sequence[SourceRecord], chunk_index: int) -> ChunkResult:
        """Process many records at once: bulk tokenization, then ``process`` for each. Deterministic per chunk."""
        self.rng = np.random.default_rng([self.seed, chunk_index])
        self.current_chunk = records
        self.counters = Counter()
        per_record = [self.texts(r) for r in records]
        flat = [t for texts in per_record for t in texts]
        if flat:
            assert self.tokenizer is not None
            ids = self.tokenizer.encode_batch(flat)
            start = 0
            for record, texts in zip(records, per_record):
                record.encoded = ids[start:start + len(texts)]
                start += len(texts)
        batch = RecordBatch(self.fields)
        skips: list[Skip] = []
        outputs: list[dict[str, Any]] = []
        for record in records:
            try:
                produced = len(outputs)
                outputs.extend(self.process(record))
                if len(outputs) == produced:
                    skips.append(Skip(record.file, record.line, "no_records: too short to make an example"))
            except SkipRecord as exc:
                skips.append(Skip(record.file, record.line, exc.reason))
        batch.add_many(list(self.finish_chunk(outputs)))
        self.current_chunk = ()
        return ChunkResult(batch, skips, dict(self.counters), len(records))

    def finish_chunk(self, outputs: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """The stored records of a chunk from what ``process`` gave, in order; packing processors merge here."""
        return outputs

    # ---- load time ---------------------------------------------------------------------------------
    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One stored record -> one unpadded example of batch keys (numpy arrays)."""
        raise NotImplementedError

    def pad_value(self, key: str) -> int | float:
        """What the collate pads ``key`` with: declared value, -100 for labels, pad id for ids, else 0."""
        if key in self.pad_values:
            return self.pad_values[key]
        if key.endswith("labels") or key.endswith("labels_backward"):
            return IGNORE_INDEX
        if key in (INPUT_IDS, DECODER_INPUT_IDS) and self.tokenizer is not None:
            return self.tokenizer.optional_id("pad") or 0
        return 0

    # ---- bookkeeping -------------------------------------------------------------------------------
    def manifest_entry(self) -> dict[str, Any]:
        """What the manifest records about this processor, enough to rebuild it at load time."""
        return {"name": self.name, "seq_length": self.seq_length, "seed": self.seed,
                "options": to_dict(self.options)}

    def chunk_seed(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *keys])


def build_options(cls: type[Processor], options: Mapping[str, Any] | None, where: str = "") -> Any:
    """The processor's options dataclass from a dict; unknown keys are errors naming the valid ones."""
    return build(cls.Options, dict(options or {}), path=where or f"{cls.name} options")


def build_processor(name: str, tokenizer: Tokenizer | None, seq_length: int,
                    options: Mapping[str, Any] | None = None, seed: int = 7) -> Processor:
    """Make a registered processor by name."""
    cls = get("processor", name)
    return cls(tokenizer, seq_length, build_options(cls, options), seed=seed)


def processor_from_dataset(dataset: StoredDataset | str | Path, seq_length: int | None = None,
                           option_overrides: Mapping[str, Any] | None = None) -> Processor:
    """Rebuild the processor a dataset was written with (tokenizer from its ``tokenizer/`` folder).

    ``option_overrides`` replace load-time options, e.g. ``{"masking": {"mask_prob": 0.2}}``; keys the
    processor does not have raise ConfigError.
    """
    from modaloom.data.tokenizers import load_tokenizer_dir

    if not isinstance(dataset, StoredDataset):
        dataset = StoredDataset(dataset)
    entry = dataset.manifest.get("processor")
    if not isinstance(entry, dict) or "name" not in entry:
        raise DataError(f"{dataset.directory}/manifest.json has no processor entry")
    cls = get("processor", entry["name"])
    options = dict(entry.get("options") or {})
    for key, value in (option_overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(options.get(key), Mapping):
            options[key] = {**options[key], **value}
        else:
            options[key] = value
    tokenizer_dir = dataset.directory / "tokenizer"
    tokenizer = load_tokenizer_dir(tokenizer_dir) if tokenizer_dir.exists() else None
    return cls(tokenizer, seq_length or int(entry["seq_length"]), build_options(cls, options),
               seed=int(entry.get("seed", 7)))


def stable_hash(*parts: str) -> int:
    """A process-independent 32-bit hash (Python's hash() is salted per process)."""
    return zlib.crc32("\x1f".join(parts).encode("utf-8"))


def options_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
