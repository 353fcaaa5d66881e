"""Sharded, memory-mapped record storage: the on-disk form of a preprocessed dataset.

Layout of a dataset directory (see docs/data.md)::

    manifest.json                      written last: its presence means the dataset is complete
    skipped.jsonl                      every skipped input record: file, line, reason
    shard-00000/<field>.data           flat values of one field for every record of the shard
    shard-00000/<field>.offsets        int64, n+1 start offsets (sequence fields only)
    tokenizer/                         the tokenizer's own files, so the dataset is self-contained

Fields are either ``sequence`` (variable length per record) or ``scalar`` (one value per record).
A writer builds everything in a sibling ``.<name>.partial`` directory and renames it into place at the
end, so an interrupted run never leaves a directory that looks complete. The manifest records each shard
file's byte size; opening a dataset checks them, so a truncated copy is refused rather than read.
With a ``resume_key`` the writer records its complete shards in ``.<name>.partial/progress.json``, and a
later writer with the same key continues after them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modaloom.atomic import atomic_write_json, recover_stale, swap_directory
from modaloom.errors import DataError, ModaloomError
from modaloom.outputs import check_output_dir

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
PROGRESS = "progress.json"  # in the partial directory only: what a resumed run may reuse
FORMAT_VERSION = 1
SKIPS_IN_MANIFEST = 100  # the manifest lists the first N skips; skipped.jsonl holds them all


@dataclass(frozen=True)
class FieldSpec:
    """A stored field: numpy dtype name and kind (``sequence`` = variable length, ``scalar`` = one value)."""

    dtype: str
    kind: str = "sequence"

    def __post_init__(self) -> None:
        if self.kind not in ("sequence", "scalar"):
            raise ValueError(f"field kind must be 'sequence' or 'scalar', got {self.kind!r}")
        np.dtype(self.dtype)


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary of ``vocab_size``."""
    for name in ("uint8", "uint16", "uint32"):
        if vocab_size <= np.iinfo(name).max + 1:
            return name
    return "uint64"


@dataclass
class Skip:
    """One input record that was not stored, and why."""

    file: str
    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


class RecordBatch:
    """Many records of named fields, packed as flat arrays plus per-record lengths (cheap to pickle)."""

    def __init__(self, fields: Mapping[str, FieldSpec]):
        self.fields = dict(fields)
        self._values: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        self._lengths: dict[str, list[int]] = {name: [] for name in fields}
        self.count = 0

    def add(self, record: Mapping[str, Any]) -> None:
        """Append one record; every field must be present (scalars as Python numbers or 0-d arrays)."""
        missing = set(self.fields) - set(record)
        if missing:
            raise KeyError(f"record lacks fields {sorted(missing)}")
        for name, spec in self.fields.items():
            value = np.asarray(record[name], dtype=spec.dtype)
            if spec.kind == "scalar" and value.ndim != 0:
                raise ValueError(f"field {name!r} is scalar but got shape {value.shape}")
            value = value.reshape(-1)
            self._values[name].append(value)
            self._lengths[name].append(len(value))
        self.count += 1

    def add_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records in order: the arrays ``add`` would build one by one, converted once per field.

        The bulk path takes the form the text processors produce (a Python list per sequence, an int per
        scalar); anything else, and any value numpy refuses, goes through ``add`` (same result, same errors)."""
        columns: dict[str, tuple[np.ndarray, list[int]]] = {}
        try:
            for name, spec in self.fields.items():
                values = [record[name] for record in records]
                if spec.kind == "scalar":
                    if not all(type(v) is int for v in values):
                        raise TypeError(name)
                    columns[name] = (np.array(values, dtype=spec.dtype), [1] * len(values))
                else:
                    if not all(type(v) is list for v in values):
                        raise TypeError(name)
                    lengths = [len(v) for v in values]
                    flat = np.array([item for v in values for item in v], dtype=spec.dtype)
                    if flat.ndim != 1 or len(flat) != sum(lengths):  # nested lists: add reshapes them
                        raise TypeError(name)
                    columns[name] = (flat, lengths)
        except (KeyError, TypeError, ValueError, OverflowError):
            for record in records:
                self.add(record)
            return
        for name, (flat, lengths) in columns.items():
            self._values[name].append(flat)
            self._lengths[name].extend(lengths)
        self.count += len(records)

    def total_length(self, name: str) -> int:
        """Sum of the lengths of ``name`` over all records (e.g. the token count)."""
        return int(sum(self._lengths[name]))

    def packed(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Field -> (flat values, per-record lengths, or None for scalar fields)."""
        out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for name, spec in self.fields.items():
            values = self._values[name]
            flat = np.concatenate(values) if values else np.empty(0, dtype=spec.dtype)
            lengths = None if spec.kind == "scalar" else np.asarray(self._lengths[name], dtype=np.int64)
            out[name] = (flat.astype(spec.dtype, copy=False), lengths)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"fields": self.fields, "count": self.count, "packed": self.packed()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.fields = state["fields"]
        self.count = state["count"]
        self._values, self._lengths = {}, {}
        for name, (flat, lengths) in state["packed"].items():
            self._values[name] = [flat] if len(flat) else []
            self._lengths[name] = [len(flat)] if lengths is None else lengths.tolist()
        # one flat chunk per field now; packed() re-concatenates only if records are added later


class _ShardWriter:
    """Appends packed fields of one shard to open files; offsets are kept in memory (8 bytes/record)."""

    def __init__(self, directory: Path, fields: Mapping[str, FieldSpec]):
        self.directory = directory
        directory.mkdir(parents=True)
        self.fields = fields
        self.files = {name: open(directory / f"{name}.data", "wb") for name in fields}  # noqa: SIM115
        self.ends: dict[str, list[np.ndarray]] = {n: [] for n, s in fields.items() if s.kind == "sequence"}
        self.totals = {name: 0 for name in fields}
        self.count = 0
        self.nbytes = 0

    def write(self, packed: Mapping[str, tuple[np.ndarray, np.ndarray | None]], count: int) -> None:
        for name, (flat, lengths) in packed.items():
            flat.tofile(self.files[name])
            self.nbytes += flat.nbytes
            if lengths is not None:
                if len(lengths) != count:
                    raise ValueError(f"field {name!r}: {len(lengths)} lengths for {count} records")
                self.ends[name].append(self.totals[name] + np.cumsum(lengths, dtype=np.int64))
            elif len(flat) != count:
                raise ValueError(f"scalar field {name!r}: {len(flat)} values for {count} records")
            self.totals[name] += len(flat)
        self.count += count

    def close(self) -> dict[str, Any]:
        """Flush every file to disk and return the shard's manifest entry (records, byte size per file)."""
        sizes = {}
        for name, handle in self.files.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            if name in self.ends:
                offsets = np.concatenate([np.zeros(1, np.int64), *self.ends[name]])
                with open(self.directory / f"{name}.offsets", "wb") as out:
                    offsets.tofile(out)
                    out.flush()
                    os.fsync(out.fileno())
                sizes[f"{name}.offsets"] = offsets.nbytes
            sizes[f"{name}.data"] = (self.directory / f"{name}.data").stat().st_size
        return {"name": self.directory.name, "records": self.count, "bytes": dict(sorted(sizes.items()))}


PARTIAL_ENTRIES = (SKIPPED, PROGRESS, MANIFEST, "tokenizer")


def check_own_partial(folder: Path) -> None:
    """Refuse to delete a ``.<out>.partial`` folder that holds anything a dataset writer would not write
    there (its shards, skips, progress, manifest, tokenizer and hidden temp files): it is someone's folder."""
    foreign = sorted(p.name for p in folder.iterdir()
                     if not (p.name in PARTIAL_ENTRIES or p.name.startswith(("shard-", "."))))
    if foreign:
        raise DataError(f"{folder} looks like an interrupted preprocess but holds other files "
                        f"({', '.join(foreign[:5])}); it is left alone: move it away, or choose another --out")


class DatasetWriter:
    """Writes records into a new dataset directory atomically (temp dir, manifest last, rename).

    Use as a context manager: an exception removes the partial directory (a KeyboardInterrupt keeps it
    when progress was saved, for a resume); ``close(manifest)`` publishes. ``out_dir`` must pass
    ``outputs.check_output_dir``: an existing dataset is replaced only when ``overwrite`` is set, and only once the
    new one is complete; other non-empty folders, and folders holding one of ``inputs``, never are.
    """

    def __init__(self, out_dir: str | Path, fields: Mapping[str, FieldSpec], *,
                 shard_bytes: int = 256 << 20, overwrite: bool = False, inputs: Sequence[str | Path] = (),
                 resume_key: str = ""):
        self.out_dir = Path(out_dir)
        self.fields = dict(fields)
        if not self.fields:
            raise ValueError("a dataset needs at least one field")
        self.shard_bytes = shard_bytes
        self.overwrite = overwrite
        recover_stale(self.out_dir)  # a crash mid-swap: put the old dataset back, or refuse before any work
        try:
            check_output_dir(self.out_dir, kind="dataset", markers=[MANIFEST], inputs=inputs, overwrite=overwrite)
        except ModaloomError as exc:
            raise DataError(str(exc)) from None
        self.partial = self.out_dir.parent / f".{self.out_dir.name}.partial"
        self.skip_reasons: Counter[str] = Counter()
        self.first_skips: list[dict[str, Any]] = []
        self.shards: list[dict[str, Any]] = []
        self.count = 0
        self.resume_key = resume_key
        self.resumed: dict[str, Any] | None = None  # the caller's state saved with the last complete shard
        self.resumed_shards = self.resumed_records = 0
        self.manifest: dict[str, Any] = {}
        if not self._resume():
            if self.partial.exists():  # left by an interrupted run that cannot be resumed: start clean
                check_own_partial(self.partial)
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
        self._skips_file = open(self.partial / SKIPPED, "a", encoding="utf-8")  # noqa: SIM115
        self._shard: _ShardWriter | None = None
        self.closed = False

    def _resume(self) -> bool:
        """Reuse the complete shards of an interrupted run with the same ``resume_key``; False if none."""
        progress_path = self.partial / PROGRESS
        if not self.resume_key or not progress_path.is_file():
            return False
        try:
            progress = json.loads(progress_path.read_text(encoding="utf-8"))
            if progress.get("resume_key") != self.resume_key:
                return False
            skips_path = self.partial / SKIPPED
            kept = {shard["name"] for shard in progress["shards"]}
            if any(shard_problem(self.partial / shard["name"], shard, self.fields) for shard in progress["shards"]) \
                    or not skips_path.is_file() or skips_path.stat().st_size < progress["skipped_bytes"]:
                return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable progress: start clean
            return False
        for item in self.partial.iterdir():  # the shard being written when the run stopped
            if item.name.startswith("shard-") and item.name not in kept:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        with open(skips_path, "r+b") as handle:  # drop skips recorded after the last complete shard
            handle.truncate(progress["skipped_bytes"])
        self.shards = progress["shards"]
        self.count = progress["records"]
        self.skip_reasons = Counter(progress["skip_reasons"])
        self.first_skips = progress["first_skips"]
        self.resumed = progress["state"]
        self.resumed_shards, self.resumed_records = len(self.shards), self.count
        return True

    def save_progress(self, state: Mapping[str, Any]) -> None:
        """Record the complete shards and the caller's ``state`` so that a rerun can resume from here.

        Call right after ``add_batch`` returned True (a shard was completed); needs a ``resume_key``."""
        if not self.resume_key:
            raise ValueError("save_progress needs a DatasetWriter made with a resume_key")
        if self._shard is not None:
            raise ValueError("save_progress is valid only when no shard is open (after add_batch returned True)")
        self._skips_file.flush()
        os.fsync(self._skips_file.fileno())
        atomic_write_json(self.partial / PROGRESS, {
            "resume_key": self.resume_key, "shards": self.shards, "records": self.count,
            "skipped_bytes": os.fstat(self._skips_file.fileno()).st_size, "skip_reasons": dict(self.skip_reasons),
            "first_skips": self.first_skips, "state": dict(state)})

    @property
    def path(self) -> Path:
        """Where files that belong in the dataset (e.g. the tokenizer) are written before publishing."""
        return self.partial

    def add_batch(self, batch: RecordBatch) -> bool:
        """Append a packed batch of records (the form worker processes return); True if a shard completed."""
        if batch.count == 0:
            return False
        if set(batch.fields) != set(self.fields):
            raise ValueError(f"batch fields {sorted(batch.fields)} differ from {sorted(self.fields)}")
        packed = batch.packed()
        if self._shard is None:
            self._shard = _ShardWriter(self.partial / f"shard-{len(self.shards):05d}", self.fields)
        self._shard.write(packed, batch.count)
        self.count += batch.count
        if self._shard.nbytes >= self.shard_bytes:
            self._finish_shard()
            return True
        return False

    def add(self, record: Mapping[str, Any]) -> None:
        batch = RecordBatch(self.fields)
        batch.add(record)
        self.add_batch(batch)

    def skip(self, skip: Skip) -> None:
        """Record an input record that was not stored (nothing is dropped silently)."""
        row = skip.as_dict()
        self._skips_file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.skip_reasons[skip.reason.split(":")[0]] += 1
        if len(self.first_skips) < SKIPS_IN_MANIFEST:
            self.first_skips.append(row)

    def _finish_shard(self) -> None:
        if self._shard is not None:
            self.shards.append(self._shard.close())
            self._shard = None

    def close(self, manifest: Mapping[str, Any] | None = None) -> Path:
        """Finish shards, write the manifest last and move the directory into place."""
        self._finish_shard()
        self._skips_file.close()
        body = dict(manifest or {})
        body.update({
            "format_version": FORMAT_VERSION,
            "records": self.count,
            "fields": {name: {"dtype": s.dtype, "kind": s.kind} for name, s in self.fields.items()},
            "shards": self.shards,
            "skipped": {"count": sum(self.skip_reasons.values()), "by_reason": dict(self.skip_reasons),
                        "first": self.first_skips, "all_in": SKIPPED},
        })
        (self.partial / PROGRESS).unlink(missing_ok=True)
        atomic_write_json(self.partial / MANIFEST, body)
        swap_directory(self.partial, self.out_dir)
        self.manifest = body
        self.closed = True
        return self.out_dir

    def _close_files(self) -> None:
        if self._shard is not None:
            for handle in self._shard.files.values():
                handle.close()
            self._shard = None
        if not self._skips_file.closed:
            self._skips_file.close()

    def abort(self) -> None:
        """Remove the partial directory; the previous dataset (if any) is untouched."""
        self._close_files()
        shutil.rmtree(self.partial, ignore_errors=True)
        self.closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.closed:
            return
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt | SystemExit) and \
                (self.partial / PROGRESS).exists():
            self._close_files()  # interrupted, not failed: keep the complete shards for a rerun to resume
            self.closed = True
            return
        self.abort()


def shard_problem(folder: Path, shard: Mapping[str, Any], fields: Mapping[str, FieldSpec]) -> str:
    """What is wrong with one shard's files ('' when nothing): a missing file, or a size that does not match
    the manifest's byte counts, its record count or the shard's own last offset (a truncated copy)."""
    records = int(shard["records"])
    recorded = shard.get("bytes", {})
    for name, spec in fields.items():
        itemsize = np.dtype(spec.dtype).itemsize
        data = folder / f"{name}.data"
        offsets = folder / f"{name}.offsets"
        try:
            data_size = data.stat().st_size
            if spec.kind == "sequence":
                offsets_size = offsets.stat().st_size
        except OSError as exc:
            return f"{exc.filename}: cannot read it ({exc.strerror or exc})"
        expected_data = recorded.get(f"{name}.data")
        if spec.kind == "sequence":
            expected_offsets = 8 * (records + 1)
            if offsets_size != expected_offsets:
                return (f"{offsets} is {offsets_size} bytes, expected {expected_offsets} "
                        f"({records} records + 1 int64 offsets)")
            with open(offsets, "rb") as handle:
                handle.seek(-8, os.SEEK_END)
                last = int(np.frombuffer(handle.read(8), dtype=np.int64)[0])
            if expected_data is None:
                expected_data = last * itemsize
            elif last * itemsize != expected_data:
                return (f"{offsets} ends at value {last} ({last * itemsize} bytes of {spec.dtype}) but the "
                        f"manifest records {expected_data} bytes for {data.name}")
        elif expected_data is None:
            expected_data = records * itemsize
        if data_size != expected_data:
            return f"{data} is {data_size} bytes, expected {expected_data} (truncated or altered after writing)"
    return ""


def _map(path: Path, dtype: str) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)  # plain views: cheaper slicing


class StoredDataset:
    """Read-only view of a dataset directory; ``ds[i]`` is a dict of memory-mapped arrays, O(1).

    Pickles without its maps (they are reopened lazily), so DataLoader workers can share it cheaply.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            partial = self.directory.parent / f".{self.directory.name}.partial"
            hint = " (an interrupted preprocess left a partial directory; re-run it)" if partial.exists() else ""
            raise DataError(f"{self.directory} is not a complete dataset: no {MANIFEST}{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from None
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{manifest_path}: format_version {version!r}, this modaloom reads {FORMAT_VERSION}")
        self.fields = {n: FieldSpec(f["dtype"], f["kind"]) for n, f in self.manifest["fields"].items()}
        for shard in self.manifest["shards"]:
            problem = shard_problem(self.directory / shard["name"], shard, self.fields)
            if problem:
                raise DataError(f"dataset {self.directory} is damaged: {problem}; re-run modaloom preprocess")
        counts = [int(s["records"]) for s in self.manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.shard_bounds: list[tuple[int, int]] = [
            (int(self._starts[i]), int(self._starts[i + 1])) for i in range(len(counts))]
        self._maps: list[dict[str, tuple[np.ndarray, np.ndarray | None]]] | None = None

    def _open(self) -> list[dict[str, tuple[np.ndarray, np.ndarray | None]]]:
        maps = []
        for shard in self.manifest["shards"]:
            folder = self.directory / shard["name"]
            entry: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
            for name, spec in self.fields.items():
                try:
                    data = _map(folder / f"{name}.data", spec.dtype)
                    offsets = _map(folder / f"{name}.offsets", "int64") if spec.kind == "sequence" else None
                except OSError as exc:
                    raise DataError(f"{folder}: cannot open field {name!r}: {exc.strerror or exc}") from None
                expected = shard["records"] + 1 if offsets is not None else shard["records"]
                got = len(offsets) if offsets is not None else len(data)
                if got != expected:
                    raise DataError(f"{folder}: field {name!r} holds {got} entries, manifest says {expected}")
                entry[name] = (data, offsets)
            maps.append(entry)
        return maps

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global record index -> (shard number, index within the shard)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if self._maps is None:
            self._maps = self._open()
        shard, local = self.locate(int(index))
        out = {}
        for name, (data, offsets) in self._maps[shard].items():
            out[name] = data[offsets[local]:offsets[local + 1]] if offsets is not None else data[local]
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def lengths(self, field: str) -> np.ndarray:
        """Length of ``field`` for every record (int64), e.g. for length-grouped sampling or packing."""
        if self.fields[field].kind != "sequence":
            raise ValueError(f"field {field!r} is scalar")
        if self._maps is None:
            self._maps = self._open()
        parts = [np.diff(np.asarray(m[field][1])) for m in self._maps]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def skipped(self) -> Iterator[dict[str, Any]]:
        """Every skipped input record (file, line, reason)."""
        path = self.directory / SKIPPED
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    yield json.loads(line)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = None
        return state


def open_dataset(directory: str | Path) -> StoredDataset:
    """Open a preprocessed dataset directory written by DatasetWriter."""
    return StoredDataset(directory)
