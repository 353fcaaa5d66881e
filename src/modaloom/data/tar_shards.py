"""Webdataset tar shards (as open_clip and webdataset users keep image-text and audio-text pairs), streamed.

A shard holds samples as consecutive members sharing a key: ``000123.jpg`` + ``000123.txt`` is one sample
``{"__key__": "000123", "jpg": <bytes>, "txt": "a caption"}``. The key is the member path up to the first
dot of its file name, the field the rest (lowercased: ``caption.txt``, ``flac``). Text fields (last suffix
in ``TEXT_SUFFIXES``) are decoded as UTF-8; the rest stay bytes for the processor (an image, a sound).

Read as a stream by ``tar_members`` (a small reader of ustar / GNU / pax headers): one member at a time,
one sample in memory, gzip / bzip2 / xz shards too, and every failure is ours to count. Neither the
``webdataset`` package nor ``tarfile`` is used: both parse headers with ``tarfile``, several times slower
than the text path on shards of small samples, and ``webdataset`` turns bad samples into exceptions or
warnings rather than counted skips. A truncated shard keeps the samples before the damage and records one
``bad_tar`` skip; a file that is not a tar at all is an error.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from modaloom.data.processors.base import SourceRecord
from modaloom.data.readers import record_from_object
from modaloom.data.storage import Skip
from modaloom.errors import DataError

TEXT_SUFFIXES = frozenset({"txt", "text", "cls", "json", "caption", "transcript"})
TEXT_NAMES = ("txt", "text")  # where line / document processors look for the text of a sample
KEY_FIELD = "__key__"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
ZERO_BLOCK = bytes(512)


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


class DamagedTar(Exception):
    """A tar header or member that cannot be read (truncated data, bad checksum)."""


_DECOMPRESSORS = ((b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw)), (b"BZh", bz2.BZ2File),
                  (b"\xfd7zXZ\x00", lzma.LZMAFile))


@contextlib.contextmanager
def open_shard(path: Path) -> Iterator[BinaryIO]:
    """The shard's bytes, decompressed when it is gzip, bzip2 or xz (recognised by its first bytes)."""
    try:
        raw = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"cannot read webdataset shard {path}: {exc.strerror or exc}") from None
    with raw:
        magic = raw.peek(6)[:6]
        opener = next((make for prefix, make in _DECOMPRESSORS if magic.startswith(prefix)), None)
        if opener is None:
            yield raw
            return
        with io.BufferedReader(opener(raw), 1 << 20) as handle:
            yield handle


def _octal(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit of the first byte is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise DamagedTar(f"bad number {text!r} in a header") from None


def _checksum_ok(block: bytes) -> bool:
    """The header's stored checksum matches its bytes (summed unsigned, or signed as some old tars did)."""
    try:
        stored = _octal(block[148:156])
    except DamagedTar:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 256
    return stored == unsigned or stored == sum(struct.unpack("148b8x356b", block)) + 256


def _exact(handle: BinaryIO, size: int, what: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise DamagedTar(f"{what} ends after {len(data)} of {size} bytes")
    return data


def tar_members(handle: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(path, data) of each regular file of a tar stream, in order; one member in memory at a time.

    Reads ustar, GNU (long names) and pax (path and size records) headers; folders, links and global
    headers are passed over. The standard library's ``tarfile`` parses every field of every header in
    Python, which made reading a shard of small text samples several times slower than the text corpus."""
    long_name: str | None = None
    pax_size: int | None = None
    first = True
    while True:
        try:
            block = handle.read(512)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise DamagedTar(f"cannot decompress: {exc}") from None
        if not block or block == ZERO_BLOCK:
            return  # end of archive (a missing end marker is tolerated, as tar does)
        if len(block) < 512 or not _checksum_ok(block):
            if first:
                raise DataError("not a tar file (the first header is not a tar header)")
            raise DamagedTar("a header is cut short" if len(block) < 512 else "a header's checksum is wrong")
        first = False
        name = block[:100].split(b"\0", 1)[0]
        if block[257:262] == b"ustar" and block[345] != 0:
            name = block[345:500].split(b"\0", 1)[0] + b"/" + name
        size = pax_size if pax_size is not None else _octal(block[124:136])
        kind = block[156:157]
        try:
            data = _exact(handle, size, f"member {name.decode('utf-8', 'replace')}")
            _exact(handle, -size % 512, f"member {name.decode('utf-8', 'replace')}'s padding")
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise DamagedTar(f"cannot decompress: {exc}") from None
        if kind == b"L":  # GNU: the next member's long name
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":  # pax: records "<length> <key>=<value>\n" for the next member
            records = _pax_records(data)
            long_name = records.get("path", long_name)
            pax_size = int(records["size"]) if "size" in records else None
            continue
        if kind in (b"0", b"\0", b"7"):
            yield (long_name if long_name is not None else name.decode("utf-8", "surrogateescape")), data
        long_name, pax_size = None, None


def _pax_records(data: bytes) -> dict[str, str]:
    records, at = {}, 0
    while at < len(data) and data[at] != 0:
        length_text, _, _ = data[at:at + 20].partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            raise DamagedTar("a pax header is malformed") from None
        key, _, value = data[at + len(length_text) + 1:at + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def read_tar_shard(path: Path, input_kind: str, text_field: str = "") -> Iterator[SourceRecord | Skip]:
    """Samples of one shard in order; a record's ``line`` is the sample's 1-based number in the shard."""
    file = str(path)
    number = 0
    fields: dict[str, Any] = {}
    with open_shard(path) as handle:
        members = tar_members(handle)
        while True:
            try:
                member = next(members, None)
            except DamagedTar as exc:
                yield Skip(file, number + 1, f"bad_tar: the shard is damaged after {number} complete samples "
                                             f"({exc}); the rest of it is not read")
                return
            except DataError as exc:
                raise DataError(f"cannot read webdataset shard {path}: {exc}") from None
            if member is None:
                break
            key, field = split_name(member[0])
            if not field or key.rpartition("/")[2].startswith((".", "_")):
                continue  # files without a suffix, hidden and index files
            if fields and (key != fields[KEY_FIELD] or field in fields):
                number += 1
                yield _sample(fields, file, number, input_kind, text_field)
                fields = {}
            if not fields:
                fields[KEY_FIELD] = key
            fields[field] = member[1]
    if fields:
        yield _sample(fields, file, number + 1, input_kind, text_field)
