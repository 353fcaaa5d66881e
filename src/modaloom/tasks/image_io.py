"""Labelled image files for the image tasks: rows naming image files, read with Pillow, batched in memory.

Formats (``read_image_rows``):

- TSV (any suffix but ``.jsonl``/``.json``): a header naming the columns, e.g. ``label path`` (TencentPretrain's
  ``run_image_classifier.py`` files) or ``text path`` (image-text pairs); the image column is ``path`` (or
  ``image``); fields split on tab.
- JSONL: one object per line with ``image`` (or ``path``) and ``label`` / ``text``.
- a directory: an ImageFolder, one sub-folder per class holding that class's images (label = folder name).

A relative image path resolves against the folder of the file that names it. Every problem is a
``DataError`` naming ``file:line``: an empty line, a missing column, malformed JSON, an image file that does
not exist or does not decode. Training files may instead skip bad images (``skip_bad=True``): they are counted
and reported, never silent; files to predict or evaluate never skip, so predictions stay one-to-one.

Images are kept as their encoded bytes and decoded per batch (``ImageLoader``), resized and normalised by an
``ImageTransform`` (``modaloom.data.images``) sized from the model's patch embedding.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.data.images import ImageTransform, decode_image
from modaloom.data.processors.vision import IMAGE_SUFFIXES
from modaloom.errors import ConfigError, DataError
from modaloom.tasks.text_io import MemoryLoader, is_jsonl, read_lines, tsv_header, tsv_rows

IMAGE_KEYS = ("path", "image")
IMAGE_PARTS = ("patch", "masked_patch")
MEDIA_SUFFIXES = {"image": IMAGE_SUFFIXES, "audio": frozenset({".wav", ".flac", ".ogg"})}


@dataclass
class ImageRow:
    """One example as read: where it was named, the image file, and its label and/or text (None: absent)."""

    where: str  # "file:line", or the image path for an ImageFolder
    image: Path
    label: str | None = None
    text: str | None = None


def read_image_rows(path: str | Path, need: tuple[str, ...] = (), media: str = "image") -> list[ImageRow]:
    """Every row of a TSV/JSONL list or an ImageFolder; the columns in ``need`` ("label", "text") must be there.
    ``media="audio"`` reads lists of audio files the same way (column ``path`` or ``audio``; a folder of class
    sub-folders holds wav/flac/ogg files), for the speech side of a dual model."""
    path = Path(path)
    if path.is_dir():
        if "text" in need:
            raise DataError(f"{path}: an {media} folder has labels but no texts; give a TSV (text path) or JSONL file")
        rows = _read_folder(path, MEDIA_SUFFIXES[media])
    elif not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    else:
        lines = read_lines(path)
        keys = ("path", media)
        rows = _read_jsonl(path, lines, need, keys) if is_jsonl(path) else _read_tsv(path, lines, need, keys)
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def _image_path(list_file: Path, name: str) -> Path:
    image = Path(name).expanduser()
    return image if image.is_absolute() else list_file.parent / image


def _read_tsv(path: Path, lines: list[str], need: tuple[str, ...],
              keys: tuple[str, ...] = IMAGE_KEYS) -> list[ImageRow]:
    header = tsv_header(path, lines, "label path, or text path", need)
    image_key = next((k for k in keys if k in header), None)
    if image_key is None:
        raise DataError(f"{path}:1: header {header} has no {keys[1]} column ({' or '.join(keys)})")
    rows = []
    for where, value in tsv_rows(path, lines, header):
        if not value[image_key].strip():
            raise DataError(f"{where}: empty {keys[1]} path")
        rows.append(ImageRow(where, _image_path(path, value[image_key].strip()), value.get("label"), value.get("text")))
    return rows


def _read_jsonl(path: Path, lines: list[str], need: tuple[str, ...],
                keys: tuple[str, ...] = IMAGE_KEYS) -> list[ImageRow]:
    rows = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            raise DataError(f"{where}: empty line; remove it (every line is one JSON example)")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{where}: expected a JSON object with image and label/text, got {type(value).__name__}")
        name = next((value[k] for k in keys[::-1] if isinstance(value.get(k), str) and value[k].strip()), None)
        if name is None:
            raise DataError(f"{where}: no string field {keys[1]} (or {keys[0]}) (keys: {sorted(value)})")
        for column in need:
            if value.get(column) is None:
                raise DataError(f"{where}: no field {column}, which this file needs")
        if value.get("text") is not None and not isinstance(value["text"], str):
            raise DataError(f"{where}: text must be a string, got {type(value['text']).__name__}")
        label = value.get("label")
        if isinstance(label, (list, dict)):
            raise DataError(f"{where}: label {label!r} is not a single value")
        rows.append(ImageRow(where, _image_path(path, name.strip()), None if label is None else str(label),
                             value.get("text")))
    return rows


def _read_folder(root: Path, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[ImageRow]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (an image folder holds one folder of images per class)")
    rows = []
    for name in classes:
        for image in sorted((root / name).rglob("*")):
            if image.is_file() and image.suffix.lower() in suffixes:
                rows.append(ImageRow(str(image), image, name))
    return rows


def read_checked_bytes(row: ImageRow, media: str, decode: Callable[..., Any]) -> bytes:
    """The encoded ``media`` file (image, audio) a row names, checked to ``decode``; a missing or undecodable
    file names file:line."""
    try:
        data = row.image.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{row.where}: {media} file {row.image} not found") from None
    except OSError as exc:
        raise DataError(f"{row.where}: cannot read {media} file {row.image} ({exc.strerror or exc})") from None
    decode(data, where=f"{row.where}: {row.image}")
    return data


def read_image_bytes(row: ImageRow) -> bytes:
    """The encoded image a row names, checked to decode."""
    return read_checked_bytes(row, "image", decode_image)


@dataclass
class LoadedImages:
    """The rows whose images were read, their bytes, and the bad ones skipped (reason per row)."""

    rows: list[ImageRow]
    images: list[bytes]
    skipped: list[str] = field(default_factory=list)


def load_images(rows: list[ImageRow], skip_bad: bool, what: str = "", task: str = "",
                read: Callable[[ImageRow], bytes] = read_image_bytes) -> LoadedImages:
    """Read every row's image (or, with another ``read``, its audio); with ``skip_bad`` a bad one is dropped and
    counted (reported on stderr)."""
    out = LoadedImages([], [])
    for row in rows:
        try:
            data = read(row)
        except DataError as exc:
            if not skip_bad:
                raise
            out.skipped.append(str(exc))
            continue
        out.rows.append(row)
        out.images.append(data)
    if out.skipped:
        print(f"modaloom {task}: skipped {len(out.skipped)} of {len(rows)} {what} examples with a bad image "
              f"(task.skip_bad_images=true); first: {out.skipped[0]}", file=sys.stderr)
    if not out.rows:
        raise DataError(f"no {what} example has a readable image (first problem: {out.skipped[0]})")
    return out


def image_embedding(model_cfg: Any) -> Any:
    """The embedding section holding the model's image part (a stream of a dual model, or the embedding)."""
    sections = list(getattr(model_cfg.embedding, "streams", None) or []) or [model_cfg.embedding]
    for section in sections:
        if any(part in section.parts for part in IMAGE_PARTS):
            return section
    raise ConfigError(f"the model has no image embedding part ({' or '.join(IMAGE_PARTS)}) in embedding.parts "
                      f"{model_cfg.embedding.parts}; image tasks need a ViT- or CLIP-like model")


def model_transform(model_cfg: Any, norm: str, crop: str = "center", hflip: bool = False,
                    scale_min: float = 0.08) -> ImageTransform:
    """Decode + resize + normalise to the size of the model's patch embedding."""
    section = image_embedding(model_cfg)
    return ImageTransform(section.image_height, section.image_width, crop, norm, scale_min=scale_min, hflip=hflip)


def processor_norm(processor: str, fallback: str) -> str:
    """The normalisation the model's data processor (``data.processor``: vit, clip...) uses by default."""
    from modaloom import registry

    try:
        options = registry.get("processor", processor).Options
    except ConfigError:  # no processor recorded, or an unknown one: the task's own default
        return fallback
    norm = getattr(options, "norm", None)
    return norm if isinstance(norm, str) else fallback


def pad_ids(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists padded to the longest: (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def add_example_fields(batch: dict[str, torch.Tensor], examples: list[dict[str, Any]],
                       pad_id: int) -> dict[str, torch.Tensor]:
    """``batch`` (the media inputs) with what the examples carry beside the media: index, [task_labels],
    [image_id], [input_ids, attention_mask] padded with ``pad_id``."""
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    if "label" in examples[0]:
        batch["task_labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    if "image_id" in examples[0]:
        batch["image_id"] = torch.tensor([e["image_id"] for e in examples], dtype=torch.long)
    if "input_ids" in examples[0]:
        batch["input_ids"], batch["attention_mask"] = pad_ids([e["input_ids"] for e in examples], pad_id)
    return batch


@dataclass
class ImageLoader(MemoryLoader):
    """``MemoryLoader`` over examples holding encoded ``image`` bytes (+ ``label``, ``input_ids``...): each batch
    decodes its images with ``transform``; random crops draw from ``seed``, epoch and example, so a replay is
    exact. Batch keys: pixel_values, index, [task_labels], [input_ids, attention_mask], [image_id]."""

    transform: ImageTransform | None = None

    def collate_batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        assert self.transform is not None
        epoch = self.batch_epoch
        pixels = [self.transform(e["image"], np.random.default_rng([self.seed, epoch, e["index"]]), e["where"])
                  for e in examples]
        return add_example_fields({"pixel_values": torch.from_numpy(np.stack(pixels))}, examples, self.pad_id)
