"""Streaming readers of raw corpora: yield SourceRecords (and Skips for unreadable input), never whole files.

Formats: ``text`` (TencentPretrain corpus: one sentence per line, blank line between documents; or one
document per line), ``tsv`` (header row, tab-separated) and ``jsonl`` (one JSON object per line).
What a record is depends on the processor's ``input_kind``: ``document``, ``line`` or ``row``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from modaloom.data.processors.base import SourceRecord
from modaloom.data.storage import Skip
from modaloom.errors import DataError

FORMATS = ("text", "tsv", "jsonl")


def guess_format(path: str | Path, input_kind: str) -> str:
    """From the suffix (.tsv, .jsonl/.json); a ``row`` processor reads other files as TSV."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
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


def read_jsonl(path: Path, input_kind: str) -> Iterator[SourceRecord | Skip]:
    """JSONL objects: rows as they are; for ``line``/``document`` processors the ``text`` field
    (a document's sentences are its lines, or a ``sentences`` list)."""
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
        if input_kind == "row":
            yield SourceRecord(str(path), number, {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                                   if isinstance(v, (list, dict)) else str(v)
                                                   for k, v in value.items()})
            continue
        sentences = value.get("sentences")
        text = value.get("text")
        if input_kind == "document":
            if isinstance(sentences, list):
                parts = [str(s) for s in sentences if str(s).strip()]
            elif isinstance(text, str):
                parts = [s for s in text.split("\n") if s.strip()]
            else:
                yield Skip(str(path), number, "missing_text: no 'text' or 'sentences' field")
                continue
            if parts:
                yield SourceRecord(str(path), number, parts, [number] * len(parts))
            else:
                yield Skip(str(path), number, "empty: no text")
        else:
            if "source" in value and "target" in value:
                text = f"{value['source']}\t{value['target']}"
            if not isinstance(text, str) or not text.strip():
                yield Skip(str(path), number, "missing_text: no 'text' field (or source/target)")
                continue
            yield SourceRecord(str(path), number, text.replace("\n", " "))


def read_corpus(path: str | Path, input_kind: str, fmt: str = "") -> Iterator[SourceRecord | Skip | str]:
    """Records of one corpus file in the given (or guessed) format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus {path} does not exist or is not a file")
    fmt = fmt or guess_format(path, input_kind)
    if fmt == "jsonl":
        return read_jsonl(path, input_kind)
    if fmt == "tsv":
        return read_tsv(path)
    if fmt == "text":
        return read_text(path, input_kind)
    raise DataError(f"unknown corpus format {fmt!r}; valid formats: {', '.join(FORMATS)}")
