"""Atomic writes: build output in a temporary sibling, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replace_directory(directory: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``directory``; on success it replaces ``directory``.

    Files already in ``directory`` that the new content does not write (a tokenizer beside a model, say)
    are carried over. On error the temp folder is removed and ``directory`` is left as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        if directory.exists():
            for item in directory.iterdir():
                if not (tmp / item.name).exists():
                    os.replace(item, tmp / item.name)
            old = directory.with_name(f".{directory.name}.old")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
