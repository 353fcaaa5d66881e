"""Webdataset tar shards (as open_clip and webdataset users keep image-text and audio-text pairs), streamed.

A shard holds samples as consecutive members sharing a key: ``000123.jpg`` + ``000123.txt`` is one sample
``{"__key__": "000123", "jpg": <bytes>, "txt": "a caption"}``. The key is the member path up to the first
dot of its file name, the field the rest (lowercased: ``caption.txt``, ``flac``). Text fields (last suffix
in ``TEXT_SUFFIXES``) are decoded as UTF-8; the rest stay bytes for the processor (an image, a sound).

Read with the standard library's ``tarfile`` in stream mode: one member at a time, one sample in memory,
gzip shards too, and every failure is ours to count. A truncated shard keeps the samples before the damage
and records one ``bad_tar`` skip; a file that is not a tar at all is an error.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modaloom.data.processors.base import SourceRecord
from modaloom.data.readers import record_from_object
from modaloom.data.storage import Skip
from modaloom.errors import DataError

TEXT_SUFFIXES = frozenset({"txt", "text", "cls", "json", "caption", "transcript"})
TEXT_NAMES = ("txt", "text")  # where line / document processors look for the text of a sample
KEY_FIELD = "__key__"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``shard-{000..002}.tar`` -> three names (zero padding kept),
    ``{train,val}.tar`` -> two. Text without braces is returned as it is."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = _RANGE.match(body)
    if numeric:
        first, last = numeric.group(1), numeric.group(2)
        width = len(first) if first.lstrip("-").startswith("0") and len(first) > 1 else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise DataError(f"corpus pattern {pattern!r}: '{{{body}}}' is neither a range such as {{000..009}} "
                        "nor a list such as {train,val}")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def expand_corpora(corpora: Sequence[str | Path]) -> list[Path]:
    """Corpus paths with brace patterns expanded (a path that exists as written is kept as it is)."""
    paths: list[Path] = []
    for corpus in corpora:
        text = str(corpus)
        if Path(text).exists() or "{" not in text:
            paths.append(Path(text))
            continue
        names = expand_braces(text)
        missing = [n for n in names if not Path(n).exists()]
        if missing:
            raise DataError(f"corpus pattern {text!r} names {len(names)} files; {len(missing)} do not exist, "
                            f"e.g. {missing[0]}")
        paths.extend(Path(n) for n in names)
    return paths


def split_name(name: str) -> tuple[str, str]:
    """(sample key, field) of a member path: up to / after the first dot of its file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, field = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (field.lower() if dot else "")


def _sample(fields: dict[str, Any], file: str, number: int, input_kind: str,
            text_field: str) -> SourceRecord | Skip:
    """A finished sample as a record; a text field that is not UTF-8 skips the sample (``not_utf8``)."""
    for name, data in fields.items():
        if name != KEY_FIELD and name.rsplit(".", 1)[-1] in TEXT_SUFFIXES:
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                return Skip(file, number, f"not_utf8: field {name!r} of sample {fields[KEY_FIELD]!r} "
                                          "holds bytes that are not UTF-8")
    return record_from_object(file, number, fields, input_kind, text_field, TEXT_NAMES)


def read_tar_shard(path: Path, input_kind: str, text_field: str = "") -> Iterator[SourceRecord | Skip]:
    """Samples of one shard in order; a record's ``line`` is the sample's 1-based number in the shard."""
    file = str(path)
    number = 0
    fields: dict[str, Any] = {}
    try:
        archive = tarfile.open(path, mode="r|*")  # noqa: SIM115 - closed below, a generator holds it
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read webdataset shard {path}: not a tar file ({exc})") from None
    with archive:
        members = iter(archive)
        while True:
            try:
                member = next(members, None)
                if member is not None and member.isfile():
                    key, field = split_name(member.name)
                    handle = archive.extractfile(member)
                    data = handle.read() if handle is not None else b""
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield Skip(file, number + 1, f"bad_tar: the shard is damaged after {number} complete samples "
                                             f"({exc}); the rest of it is not read")
                return
            if member is None:
                break
            if not member.isfile() or not field or key.rpartition("/")[2].startswith((".", "_")):
                continue  # folders, files without a suffix, hidden and index files
            if fields and (key != fields[KEY_FIELD] or field in fields):
                number += 1
                yield _sample(fields, file, number, input_kind, text_field)
                fields = {}
            if not fields:
                fields[KEY_FIELD] = key
            fields[field] = data
    if fields:
        yield _sample(fields, file, number + 1, input_kind, text_field)
