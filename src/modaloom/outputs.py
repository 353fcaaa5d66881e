"""Which output folders a command may replace: the one rule every writer of a folder applies first.

A command replaces only a folder it made itself (it holds the ``marker`` file, e.g. a dataset's
``manifest.json``) or an empty one, and never a folder that holds one of the command's own inputs.
Anything else is refused with the folder and the reason, so a mistyped ``--out`` cannot delete user data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modaloom.errors import ModaloomError


def _contains(folder: Path, path: Path) -> bool:
    """True when ``path`` is ``folder`` itself or lies anywhere under it (symlinks resolved)."""
    return path == folder or folder in path.parents


def check_replaceable(out: str | Path, kind: str, marker: str, inputs: Sequence[str | Path] = (), *,
                      overwrite: bool = True) -> None:
    """Refuse (ModaloomError) unless ``out`` is absent, empty, or a ``kind`` folder holding ``marker``.

    ``inputs`` are the files and folders the command reads (corpus, vocabulary, config, checkpoint): a
    folder holding any of them is never replaced, whatever it holds. With ``overwrite`` False an existing
    ``kind`` folder is refused too (the message then suggests ``--overwrite``; for anything that is not a
    ``kind`` folder it never does). Call it before any work, so a refusal costs nothing.
    """
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise ModaloomError(f"output {out} exists and is not a directory; choose another path")
    resolved = out.resolve()
    for item in inputs:
        path = Path(item)
        if path.exists() and _contains(resolved, path.resolve()):
            what = "is" if path.resolve() == resolved else "holds"
            raise ModaloomError(f"output {out} {what} an input of this command ({item}); it is never replaced: "
                                f"choose another output folder")
    if (out / marker).exists():
        if not overwrite:
            raise ModaloomError(f"output {out} already holds a {kind}; pass --overwrite to replace it")
        return
    if any(out.iterdir()):
        raise ModaloomError(f"output {out} is a non-empty folder that is not a {kind} (no {marker}); modaloom "
                            f"replaces only its own {kind} folders: choose another output folder, or empty "
                            f"this one yourself")
