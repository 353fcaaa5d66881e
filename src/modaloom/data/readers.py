"""Streaming readers of raw corpora: yield SourceRecords (and Skips for unreadable input), never whole files.

Formats: ``text`` (TencentPretrain corpus: one sentence per line, blank line between documents; or one
document per line), ``tsv`` (header row, tab-separated) and ``jsonl`` (one JSON object per line); Parquet
and ``datasets`` folders (tables.py) and webdataset tar shards (tar_shards.py) make their rows and samples
into records with ``record_from_object`` too, so every structured input gives the same records and skips.
What a record is depends on the processor's ``input_kind``: ``document``, ``line`` or ``row``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modaloom.data.processors.base import SourceRecord
from modaloom.data.storage import Skip
from modaloom.errors import DataError

FORMATS = ("text", "tsv", "jsonl", "parquet", "datasets", "webdataset")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DATASET_STATE = "state.json"  # marks a Dataset.save_to_disk folder
DATASET_DICT = "dataset_dict.json"  # marks a DatasetDict.save_to_disk folder (one sub-folder per split)


@dataclass(frozen=True)
class ReaderOptions:
    """How structured inputs are read: ``text_field`` holds the text of line / document processors (default:
    ``text``, or a ``sentences`` list; ``txt`` in webdataset samples); ``split`` picks a DatasetDict split."""

    text_field: str = ""
    split: str = ""


def is_datasets_folder(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / DATASET_STATE).is_file() or (path / DATASET_DICT).is_file())


def guess_format(path: str | Path, input_kind: str) -> str:
    """From the suffix (.tsv, .jsonl/.json, .parquet, .tar/.tar.gz/.tgz) or a ``datasets`` folder's index
    file; a ``row`` processor reads other files as TSV."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if path.name.lower().endswith(TAR_SUFFIXES):
        return "webdataset"
    if is_datasets_folder(path):
        return "datasets"
    if suffix == ".tsv" or input_kind == "row":
        return "tsv"
    return "text"


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text without newline), or (line number, None) for a line that is not UTF-8."""
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape", newline="\n")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"cannot read corpus {path}: {exc.strerror or exc}") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            if not line.isascii():
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError:
                    yield number, None
                    continue
            yield number, line


def _not_utf8(path: Path, number: int) -> Skip:
    return Skip(str(path), number, "not_utf8: the line holds bytes that are not UTF-8")


def read_text(path: Path, input_kind: str) -> Iterator[SourceRecord | Skip | str]:
    """Text corpus. ``document``: blank-line separated groups of lines; ``line``: each non-blank line.

    Yields the string ``"blank"`` for each blank line in ``line`` mode so that it can be counted."""
    if input_kind == "row":
        yield from read_tsv(path)
        return
    name = str(path)
    if input_kind == "line":
        for number, line in _lines(path):
            if line is None:
                yield _not_utf8(path, number)
            elif line.strip():
                yield SourceRecord(name, number, line)
            else:
                yield "blank"
        return
    sentences: list[str] = []
    numbers: list[int] = []
    for number, line in _lines(path):
        if line is None:
            yield _not_utf8(path, number)
            continue
        if line.strip():
            sentences.append(line)
            numbers.append(number)
        elif sentences:
            yield SourceRecord(name, numbers[0], sentences, numbers)
            sentences, numbers = [], []
        else:
            yield "blank"
    if sentences:
        yield SourceRecord(name, numbers[0], sentences, numbers)


def read_tsv(path: Path) -> Iterator[SourceRecord | Skip]:
    """TSV with a header row; each later line is a dict column -> value. Wrong column counts are skips."""
    rows = _lines(path)
    header: list[str] | None = None
    for number, line in rows:
        if line is None:
            raise DataError(f"{path}:{number}: the TSV header is not UTF-8")
        if line.strip():
            header = line.split("\t")
            break
    if header is None:
        raise DataError(f"{path}: empty TSV (a header row such as 'label<TAB>text_a' is needed)")
    for number, line in rows:
        if line is None:
            yield _not_utf8(path, number)
            continue
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(header):
            yield Skip(str(path), number, f"bad_columns: {len(values)} fields, header has {len(header)}")
            continue
        yield SourceRecord(str(path), number, dict(zip(header, values)))


def read_jsonl(path: Path, input_kind: str, text_field: str = "") -> Iterator[SourceRecord | Skip]:
    """JSONL objects, each made a record by ``record_from_object``; bad lines are ``bad_json`` skips."""
    for number, line in _lines(path):
        if line is None:
            yield _not_utf8(path, number)
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Skip(str(path), number, f"bad_json: {exc.msg}")
            continue
        if not isinstance(value, dict):
            yield Skip(str(path), number, "bad_json: not an object")
            continue
        yield record_from_object(str(path), number, value, input_kind, text_field)


def row_value(value: Any) -> Any:
    """A field as a row processor sees it: text and bytes as they are, a ``datasets`` Image / Audio struct
    as its bytes (else its path), lists and dicts as JSON, numbers as text, null as None (a missing value)."""
    if value is None or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, dict) and "bytes" in value and set(value) <= {"bytes", "path", "sampling_rate"}:
        return value["bytes"] if value["bytes"] else value.get("path")
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def record_from_object(file: str, number: int, value: Mapping[str, Any], input_kind: str, text_field: str = "",
                       text_names: tuple[str, ...] = ("text",)) -> SourceRecord | Skip:
    """One object (a JSONL line, a Parquet / Arrow row, a webdataset sample) as a record of ``input_kind``.

    ``row``: every field through ``row_value``. ``document``: a ``sentences`` list or a text whose lines
    are the sentences; ``line``: the text (or ``source``/``target`` joined by a tab). The text is the
    ``text_field`` when given, else the first of ``text_names`` present."""
    if input_kind == "row":
        return SourceRecord(file, number, {str(k): row_value(v) for k, v in value.items()})
    names = (text_field,) if text_field else text_names
    text = next((value[n] for n in names if value.get(n) is not None), None)
    shown = " or ".join(repr(n) for n in names)
    if input_kind == "document":
        sentences = value.get("sentences") if not text_field else text
        if isinstance(sentences, list):
            parts = [str(s) for s in sentences if s is not None and str(s).strip()]
        elif isinstance(text, str):
            parts = [s for s in text.split("\n") if s.strip()]
        else:
            what = f"{shown} field (text or a list of sentences)" if text_field else f"{shown} or 'sentences' field"
            return Skip(file, number, f"missing_text: no {what}{_got(names, value)}")
        if not parts:
            return Skip(file, number, "empty: no text")
        return SourceRecord(file, number, parts, [number] * len(parts))
    if not text_field and "source" in value and "target" in value:
        text = f"{value['source']}\t{value['target']}"
    if not isinstance(text, str) or not text.strip():
        what = f"{shown} field" if text_field else f"{shown} field (or source/target)"
        return Skip(file, number, f"missing_text: no {what}{_got(names, value)}")
    return SourceRecord(file, number, text.replace("\n", " "))


def _got(names: tuple[str, ...], value: Mapping[str, Any]) -> str:
    """What a present text field holds instead of text (e.g. ``, 'text' holds int``), else nothing."""
    for name in names:
        if value.get(name) is not None and not isinstance(value[name], str):
            return f", {name!r} holds {type(value[name]).__name__}"
    return ""


def read_corpus(path: str | Path, input_kind: str, fmt: str = "",
                options: ReaderOptions | None = None) -> Iterator[SourceRecord | Skip | str]:
    """Records of one corpus (a file, or a ``datasets`` folder) in the given (or guessed) format."""
    path = Path(path)
    options = options or ReaderOptions()
    fmt = fmt or guess_format(path, input_kind)
    if fmt not in FORMATS:
        raise DataError(f"unknown corpus format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "datasets":
        from modaloom.data.tables import read_datasets_folder

        if not is_datasets_folder(path):
            raise DataError(f"corpus {path} is not a folder written by `datasets` save_to_disk "
                            "(it has no state.json or dataset_dict.json)")
        return read_datasets_folder(path, input_kind, options.text_field, options.split)
    if not path.is_file():
        raise DataError(f"corpus {path} does not exist or is not a file")
    if options.split:
        raise DataError(f"--split chooses a split of a `datasets` DatasetDict folder; {path} is a {fmt} file")
    if options.text_field and fmt in ("text", "tsv"):
        raise DataError(f"--text-field names a field of jsonl, parquet, datasets or webdataset records; "
                        f"{path} is read as {fmt}")
    if fmt == "jsonl":
        return read_jsonl(path, input_kind, options.text_field)
    if fmt == "tsv":
        return read_tsv(path)
    if fmt == "parquet":
        from modaloom.data.tables import read_parquet

        return read_parquet(path, input_kind, options.text_field)
    if fmt == "webdataset":
        from modaloom.data.tar_shards import read_tar_shard

        return read_tar_shard(path, input_kind, options.text_field)
    return read_text(path, input_kind)
