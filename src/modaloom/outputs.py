"""The one rule for "may this command write its output folder here?", shared by every verb with an output.

A user's folder is precious: a command never writes into a folder that holds one of its own inputs, and
replaces an existing non-empty folder only when asked (``--overwrite``) and only when that folder is what
the command itself would write (a model folder, a dataset folder), recognised by its marker files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from modaloom.errors import ConfigError

Marker = str | Sequence[str]  # a file name, or alternatives of which one must exist
LOCK_NAME = ".modaloom.lock"


def _resolved(path: str | Path) -> Path:
    """The absolute path with symlinks and ``..`` resolved, so that two spellings of a folder compare equal."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _has_markers(folder: Path, markers: Sequence[Marker]) -> bool:
    for marker in markers:
        names = (marker,) if isinstance(marker, str) else tuple(marker)
        if not any((folder / name).is_file() for name in names):
            return False
    return True


def _describe(markers: Sequence[Marker]) -> str:
    return " and ".join(m if isinstance(m, str) else " or ".join(m) for m in markers)


def check_not_input(out: str | Path, inputs: Iterable[str | Path]) -> Path:
    """Refuse an output folder that is, lies inside, or contains one of ``inputs``; returns it resolved."""
    given = Path(out)
    target = _resolved(given)
    for item in inputs:
        source = _resolved(item)
        if target == source:
            raise ConfigError(f"output {given} is the input {item}; choose another output folder")
        if _inside(target, source):
            raise ConfigError(f"output {given} lies inside the input folder {item}; choose a folder outside it")
        if _inside(source, target):
            raise ConfigError(f"output {given} contains the input {item}; replacing it would destroy the input; "
                              f"choose another output folder")
    return target


@contextlib.contextmanager
def run_lock(out: str | Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on the run folder ``out`` while a job writes it; a second writer is refused.

    The lock is a POSIX record lock (``lockf``) on ``out/.modaloom.lock``: the kernel releases it when the
    holder exits, however it exits, so a crashed run never leaves a stale lock, and unlike ``flock`` it is
    not inherited by forked data-loader workers, which may outlive a killed run for a moment. The file
    records the holder's pid and command for the refusal message. Without ``fcntl`` (Windows) no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole job
    try:
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{folder} is being written by {holder}; wait for it to finish, or choose "
                              f"another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{command} (pid {os.getpid()})\n")
        handle.flush()
        yield
    finally:
        handle.close()


def check_output_dir(out: str | Path, *, kind: str, markers: Sequence[Marker], inputs: Iterable[str | Path],
                     overwrite: bool, flag: str = "--overwrite") -> Path:
    """Refuse, with a ConfigError naming the folder and what to do, an output folder that must not be written.

    Contract (the same for every verb):
    - ``out`` is compared by resolved path (symlinks, ``..``) with each of ``inputs`` (files or folders the
      command reads). It is always refused when it is an input, lies inside an input folder, or contains an
      input, whatever ``overwrite`` says.
    - ``out`` that does not exist, or is an empty folder, is accepted.
    - ``out`` that exists and is not a folder is refused.
    - a non-empty folder that lacks one of ``markers`` (each a file name, or a tuple of alternatives of
      which one must be a file) is not a ``kind`` folder the command would write itself: it is refused, and
      the message does not suggest ``flag``, which would not help;
    - a ``kind`` folder is refused without ``overwrite`` (the message names ``flag``) and accepted with it.
    Returns the resolved ``out``. Writing, and what happens to files already there, is the caller's job.
    """
    given = Path(out)
    target = check_not_input(given, inputs)
    if not target.exists():
        return target
    if not target.is_dir():
        raise ConfigError(f"output {given} exists and is not a folder; remove it or choose another path")
    if not any(target.iterdir()):
        return target
    if not _has_markers(target, markers):
        raise ConfigError(f"output {given} is a non-empty folder that is not a {kind} folder (it lacks "
                          f"{_describe(markers)}); modaloom replaces only its own {kind} folders, so this one is "
                          f"left alone: choose another output folder, or empty this one yourself")
    if not overwrite:
        raise ConfigError(f"output {given} already holds a {kind}; pass {flag} to replace it, "
                          f"or choose another folder")
    return target
