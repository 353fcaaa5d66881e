"""Columnar inputs read a record batch at a time: Parquet files and folders written by ``datasets``'
``save_to_disk`` (Arrow IPC streams, read memory-mapped with pyarrow, without importing ``datasets``).

Memory stays bounded by one batch (``BATCH_ROWS`` rows, or one Arrow record batch as ``datasets`` wrote it),
never the whole table. Each row becomes a record through ``readers.record_from_object``, so rows and their
skips are what the same objects would give as JSONL lines. Skips name the file and the row (1-based).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from modaloom.data.processors.base import SourceRecord
from modaloom.data.readers import DATASET_DICT, DATASET_STATE, record_from_object
from modaloom.data.storage import Skip
from modaloom.errors import DataError

BATCH_ROWS = 256  # Parquet rows converted to Python objects at a time


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError("Parquet and `datasets` inputs need pyarrow: pip install 'modaloom[data]'") from None
    return pyarrow


def _rows(file: str, batches: Iterable[Any], input_kind: str, text_field: str,
          start: int = 1) -> Iterator[SourceRecord | Skip]:
    """Records of each row of each record batch, numbered from ``start``; one batch in Python at a time."""
    number = start
    for batch in batches:
        for row in batch.to_pylist():
            yield record_from_object(file, number, row, input_kind, text_field)
            number += 1


def read_parquet(path: Path, input_kind: str, text_field: str = "") -> Iterator[SourceRecord | Skip]:
    """Rows of a Parquet file, ``BATCH_ROWS`` at a time (pyarrow reads one row group at a time)."""
    pa = _pyarrow()
    try:
        table = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read Parquet file {path}: {exc}") from None
    with table:
        yield from _rows(str(path), table.iter_batches(batch_size=BATCH_ROWS), input_kind, text_field)


def dataset_split_folder(path: Path, split: str) -> Path:
    """The folder of one split: ``path`` itself for a Dataset; for a DatasetDict the named split, or its only
    split when none is named. Errors name the splits there are."""
    if not (path / DATASET_DICT).is_file():
        if split:
            raise DataError(f"{path} is a single `datasets` Dataset, not a DatasetDict: drop --split {split}")
        return path
    try:
        splits = [str(s) for s in json.loads((path / DATASET_DICT).read_text(encoding="utf-8"))["splits"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path / DATASET_DICT}: not a DatasetDict index ({exc})") from None
    if not split:
        if len(splits) != 1:
            raise DataError(f"{path} is a DatasetDict with splits {', '.join(splits)}: choose one with --split")
        split = splits[0]
    if split not in splits:
        raise DataError(f"{path} has no split {split!r}; valid splits: {', '.join(splits)}")
    return path / split


def arrow_files(folder: Path) -> list[Path]:
    """The Arrow files of a Dataset folder, in the order its ``state.json`` lists them."""
    state_path = folder / DATASET_STATE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{state_path}: not a `datasets` state file ({exc})") from None
    for file in files:
        if not file.is_file():
            raise DataError(f"{state_path} lists {file.name}, which is missing from {folder}")
    return files


def read_datasets_folder(path: Path, input_kind: str, text_field: str = "",
                         split: str = "") -> Iterator[SourceRecord | Skip]:
    """Rows of a ``save_to_disk`` folder, streamed from its memory-mapped Arrow files batch by batch."""
    pa = _pyarrow()
    for file in arrow_files(dataset_split_folder(path, split)):
        try:
            with pa.memory_map(str(file)) as source:
                yield from _rows(str(file), pa.ipc.open_stream(source), input_kind, text_field)
        except pa.ArrowException as exc:
            raise DataError(f"cannot read {file} as an Arrow stream (a `datasets` data file): {exc}") from None
