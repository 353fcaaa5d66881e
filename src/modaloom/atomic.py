"""Atomic writes: every file or folder is built under a temporary name beside its target, then renamed.

Readers therefore see either the previous complete content or the new complete content, never half of
it. Files go through ``atomic_file`` (or the ``atomic_write_*`` shorthands); folders through
``replace_directory`` (keeps files other tools put beside the content) or ``swap_directory`` (publishes a
folder that is already complete). A folder swap sets the previous folder aside as ``.<name>.old`` between
two renames; a crash in between is repaired by the next swap, which puts that folder back first.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modaloom.errors import ModaloomError


def fsync_directory(path: str | Path) -> None:
    """Make the entries of a directory (new names, renames) durable; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix (writers such as savefig read it)."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for a writer to fill; on success it is fsynced and renamed onto ``path``.

    On error the temporary file is removed and ``path`` keeps its previous content (or stays absent); an
    OSError that names no file, or the temporary one, is raised again naming ``path`` (disk full, say).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer for {path} produced no file at {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno is not None and (exc.filename is None or Path(exc.filename) == tmp):  # name the target
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as UTF-8 JSON (non-ASCII kept as is, newline at the end) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


# ---------------------------------------------------------------- folders


def old_sibling(target: Path) -> Path:
    """Where a folder swap keeps the previous ``target`` between its two renames."""
    return target.with_name(f".{target.name}.old")


def recover_stale(target: str | Path) -> bool:
    """Repair what a crash between a swap's two renames left: put ``.<name>.old`` back when ``target`` is gone.

    Returns True when something was put back. When both exist the swap that made ``.<name>.old`` may or may
    not have finished, so nothing is guessed: the error names the folder to look at.
    """
    target = Path(target)
    old = old_sibling(target)
    if not (old.exists() or old.is_symlink()):
        return False
    if target.exists() or target.is_symlink():
        raise ModaloomError(
            f"{old} is left from an interrupted replacement of {target}; {target} holds the newer content. "
            f"Check that {old} holds nothing you need, remove it and retry"
        )
    os.replace(old, target)
    fsync_directory(target.parent)
    return True


def swap_directory(new: str | Path, target: str | Path) -> None:
    """Rename the complete folder ``new`` onto ``target``; a previous ``target`` is removed only afterwards.

    Crash-safe at every step: before the second rename the previous folder waits in ``.<name>.old`` (put
    back if that rename fails, or by the next call after a crash); ``target`` is never half-written.
    """
    new, target = Path(new), Path(target)
    recover_stale(target)
    if target.exists() and not target.is_dir():
        raise ModaloomError(f"{target} exists and is not a directory; remove it or choose another path")
    fsync_directory(new)
    if not target.exists():
        os.replace(new, target)
        fsync_directory(target.parent)
        return
    old = old_sibling(target)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        try:
            os.replace(old, target)
        except OSError as exc:
            raise ModaloomError(
                f"replacing {target} failed and its previous content could not be put back: it is in {old} "
                f"({exc}); the next write to {target} restores it, or rename it back by hand"
            ) from exc
        raise
    fsync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)  # only the superseded folder; a failure leaves it for recover_stale


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link ``src`` at ``dst`` (no data moved, original untouched); copy where links are unsupported."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _carry_over(old: Path, new: Path) -> None:
    """Give ``new`` every entry of ``old`` that it did not write, leaving ``old`` itself untouched."""
    for item in old.iterdir():
        dst = new / item.name
        if dst.exists() or dst.is_symlink():
            continue
        if item.is_symlink():
            os.symlink(os.readlink(item), dst)
        elif item.is_dir():
            shutil.copytree(item, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(item), str(dst))


@contextmanager
def replace_directory(directory: str | Path, *, keep_existing: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside ``directory``; on success it replaces ``directory``.

    With ``keep_existing`` (the default), files already in ``directory`` that the new content does not
    write (a tokenizer beside a model, say) are carried over as hard links (copies where links are
    unsupported), so the old folder stays intact until the swap; without it the new folder holds only what
    the caller wrote. On error the temp folder, which holds only what this call wrote, is removed and
    ``directory`` is left as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_stale(directory)
    tmp = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # not mkdtemp: the folder gets the usual permissions, not 0700
    try:
        yield tmp
        if keep_existing and directory.is_dir():
            _carry_over(directory, tmp)
        swap_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
