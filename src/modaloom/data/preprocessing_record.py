"""The preprocessing record of a model folder: ``preprocessing.json`` beside ``config.json``.

A model trained on a dataset keeps how that dataset was made (the processor's name, seq_length, seed and
options from its ``manifest.json``), so that later runs on raw input (``evaluate``, ``features`` on audio
lists) compute their inputs as the training data did instead of with the processor's defaults. Written by
``pretrain`` from its dataset and carried over by ``finetune`` from the model it starts from; a folder
without one (converted, or saved by an earlier version) still loads, and its readers fall back to defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modaloom.atomic import atomic_write_json
from modaloom.errors import CheckpointError

PREPROCESSING_NAME = "preprocessing.json"


def record_from_manifest(manifest: Mapping[str, Any], data_dir: str | Path) -> dict[str, Any] | None:
    """The record of a dataset's manifest: its processor entry and where it came from (None without one)."""
    entry = manifest.get("processor")
    if not isinstance(entry, Mapping) or "name" not in entry:
        return None
    tokenizer = manifest.get("tokenizer") or {}
    return {"processor": str(entry["name"]), "seq_length": entry.get("seq_length"), "seed": entry.get("seed"),
            "options": dict(entry.get("options") or {}), "tokenizer": tokenizer.get("fingerprint"),
            "data": str(Path(data_dir).resolve())}


def write_record(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``folder/preprocessing.json`` (temp file + rename)."""
    return atomic_write_json(Path(folder) / PREPROCESSING_NAME, dict(record))


def read_record(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The record of a model folder, None when it has none; an unreadable one is an error naming the file."""
    if model_dir is None:
        return None
    path = Path(model_dir) / PREPROCESSING_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the preprocessing record ({exc}); restore it, or delete it to "
                              "use the processor's default options") from None
    if not isinstance(record, dict) or not isinstance(record.get("processor"), str) or \
            not isinstance(record.get("options", {}), dict):
        raise CheckpointError(f"{path}: not a preprocessing record (expected an object with 'processor' and "
                              "'options'); restore it, or delete it to use the processor's default options")
    return record
