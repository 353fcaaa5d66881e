"""Image processors: ``vit`` (image + class label), ``mae`` and ``beit`` (images with load-time patch masks).

Inputs are TSV / JSONL rows naming an image file (relative paths resolve against the list file's folder),
rows holding the image bytes themselves (Parquet, ``datasets`` folders, webdataset shards), or an image folder with one sub-folder per class (``image_folder_records``). Images are stored as their
encoded bytes (optionally shrunk with ``max_side``) and decoded, cropped and normalised at load time in
DataLoader workers. A missing or undecodable image is a counted skip with file, line and reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modaloom.data.images import (
    CROP_MODES,
    IMAGE_NORMS,
    ImageTransform,
    blockwise_patch_mask,
    random_patch_mask,
    reencode_if_larger,
)
from modaloom.data.processors.base import Processor, SkipRecord, SourceRecord
from modaloom.data.storage import FieldSpec
from modaloom.errors import ConfigError, DataError, choices_text
from modaloom.registry import register

IMAGE_COLUMNS = ("path", "image", "image_path", "file", "filename", "jpg", "jpeg", "png", "webp")  # last 4: webdataset
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def pick_column(row: Mapping[str, Any], wanted: str, fallbacks: tuple[str, ...], what: str) -> str:
    """The row's value for column ``wanted`` (or the first of ``fallbacks`` present when empty)."""
    names = (wanted,) if wanted else fallbacks
    for name in names:
        if isinstance(row.get(name), bytes):
            raise SkipRecord(f"not_text: column {name!r} holds binary data, not a {what}")
        if name in row and row[name] is not None and str(row[name]).strip() != "":
            return str(row[name]).strip()
    raise SkipRecord(f"missing_column: no {what} in column(s) {', '.join(names)}; row has {', '.join(row)}")


def row_of(record: SourceRecord, processor: str) -> Mapping[str, Any]:
    if not isinstance(record.value, Mapping):
        raise DataError(f"{record.file}:{record.line}: processor {processor!r} reads TSV (with a header) or "
                        "JSONL rows, or an image folder; got a plain text line")
    return record.value


def read_media_file(record: SourceRecord, name: str, kind: str) -> tuple[Path, bytes]:
    """Read a media file named in a row; missing or unreadable files become a recorded skip."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(record.file).resolve().parent / path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SkipRecord(f"missing_{kind}: {path}") from None
    except OSError as exc:
        raise SkipRecord(f"unreadable_{kind}: {path}: {exc.strerror or exc}") from None
    if not data:
        raise SkipRecord(f"corrupt_{kind}: {path}: empty file")
    return path, data


def media_bytes(record: SourceRecord, wanted: str, fallbacks: tuple[str, ...], kind: str) -> tuple[str, bytes]:
    """(where, encoded bytes) of a row's image or audio: bytes held in the row itself (Parquet, ``datasets``,
    webdataset) or read from the file a column names; the first of the columns present wins."""
    row = record.value
    for name in (wanted,) if wanted else fallbacks:
        value = row.get(name)
        if isinstance(value, bytes):
            where = f"{record.file}:{record.line}:{name}"
            if not value:
                raise SkipRecord(f"corrupt_{kind}: {where}: empty")
            return where, value
        if value is not None and str(value).strip():
            break
    path, data = read_media_file(record, pick_column(row, wanted, fallbacks, f"{kind} path"), kind)
    return str(path), data


def checked_image(where: str, data: bytes, max_side: int) -> bytes:
    """Image bytes checked to decode (and shrunk when ``max_side`` > 0); undecodable ones are skips."""
    try:
        return reencode_if_larger(data, max_side, where=where)
    except DataError as exc:
        raise SkipRecord(f"corrupt_image: {exc}") from None


def image_folder_records(root: str | Path) -> tuple[list[str], Iterator[SourceRecord]]:
    """Class names (sorted sub-folder names) and rows {"path", "label"} for every image under them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not an image folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected one folder of images per class)")

    def rows() -> Iterator[SourceRecord]:
        line = 0
        for label, name in enumerate(classes):
            for path in sorted((root / name).rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    line += 1
                    yield SourceRecord(str(root / "index"), line, {"path": str(path), "label": str(label)})

    return classes, rows()


@dataclass
class ImageOptions:
    """Shared image options: preprocess-time shrinking, load-time crop and normalisation."""

    image_column: str = ""  # empty: the first of path, image, image_path, file, filename
    max_side: int = 0  # > 0: store images whose longer side exceeds this shrunk to it
    image_height: int = 224
    image_width: int = 224
    crop: str = "random_resized"  # center | random_resized | resize (use center for evaluation)
    scale_min: float = 0.08  # random_resized: smallest area fraction
    hflip: bool = True
    norm: str = "imagenet"  # imagenet | clip | half | none

    def validate(self) -> None:
        if self.crop not in CROP_MODES:
            raise ConfigError(f"crop {self.crop!r}; valid choices: {choices_text(CROP_MODES)}")
        if self.norm not in IMAGE_NORMS:
            raise ConfigError(f"norm {self.norm!r}; valid choices: {choices_text(IMAGE_NORMS)}")

    def transform(self) -> ImageTransform:
        self.validate()
        return ImageTransform(self.image_height, self.image_width, self.crop, self.norm,
                              scale_min=self.scale_min, hflip=self.hflip)


class ImageProcessor(Processor):
    """Base for processors storing one image per record: ``image`` bytes (+ whatever subclasses add)."""

    input_kind = "row"
    needs_tokenizer = False

    def __init__(self, tokenizer: Any, seq_length: int, options: Any = None, seed: int = 7):
        super().__init__(tokenizer, seq_length, options, seed)
        self.transform = self.options.transform()

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"image": FieldSpec("uint8")}

    def stored_image(self, record: SourceRecord) -> np.ndarray:
        row_of(record, self.name)
        where, data = media_bytes(record, self.options.image_column, IMAGE_COLUMNS, "image")
        return np.frombuffer(checked_image(where, data, self.options.max_side), dtype=np.uint8)

    def pixels(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return self.transform(stored["image"], rng)


@dataclass
class VitOptions(ImageOptions):
    label_column: str = "label"
    label_names: list[str] = field(default_factory=list)  # class names in id order; empty: labels are ids


@register("processor", "vit")
class VitProcessor(ImageProcessor):
    """Image classification data: image + class id -> ``pixel_values``, ``labels``."""

    name = "vit"
    Options = VitOptions

    def __init__(self, tokenizer: Any, seq_length: int, options: Any = None, seed: int = 7):
        super().__init__(tokenizer, seq_length, options, seed)
        self.label_ids = {name: i for i, name in enumerate(self.options.label_names)}

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return {"image": FieldSpec("uint8"), "label": FieldSpec("int64", "scalar")}

    def label_of(self, row: Mapping[str, Any]) -> int:
        text = pick_column(row, self.options.label_column, ("label",), "label")
        if self.label_ids:
            if text not in self.label_ids:
                raise SkipRecord(f"bad_label: {text!r} is not one of the {len(self.label_ids)} label_names")
            return self.label_ids[text]
        try:
            return int(text)
        except ValueError:
            raise SkipRecord(f"bad_label: {text!r} is not an integer class id (or set label_names)") from None

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        label = self.label_of(row_of(record, self.name))
        yield {"image": self.stored_image(record), "label": label}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"pixel_values": self.pixels(stored, rng), "labels": np.asarray(stored["label"], dtype=np.int64)}


@dataclass
class MaskedImageOptions(ImageOptions):
    patch_size: int = 16
    mask_ratio: float = 0.75
    masking: str = "random"  # random (MAE) | blockwise (BEiT)
    min_block: int = 16  # blockwise: smallest block in patches

    def validate(self) -> None:
        super().validate()
        if self.masking not in ("random", "blockwise"):
            raise ConfigError(f"masking {self.masking!r}; valid choices: blockwise, random")
        if self.image_height % self.patch_size or self.image_width % self.patch_size:
            raise ConfigError(f"image size {self.image_height}x{self.image_width} is not a multiple of "
                              f"patch_size {self.patch_size}")


@dataclass
class BeitOptions(MaskedImageOptions):
    mask_ratio: float = 0.4
    masking: str = "blockwise"


@register("processor", "mae")
class MaeProcessor(ImageProcessor):
    """Images for masked image modelling: ``pixel_values`` + ``patch_mask`` (75% random by default)."""

    name = "mae"
    Options = MaskedImageOptions

    def process(self, record: SourceRecord) -> Iterable[dict[str, Any]]:
        yield {"image": self.stored_image(record)}

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        options = self.options
        grid_h, grid_w = options.image_height // options.patch_size, options.image_width // options.patch_size
        if options.masking == "blockwise":
            mask = blockwise_patch_mask(grid_h, grid_w, options.mask_ratio, rng, min_block=options.min_block)
        else:
            mask = random_patch_mask(grid_h * grid_w, options.mask_ratio, rng)
        return {"pixel_values": self.pixels(stored, rng), "patch_mask": mask}


@register("processor", "beit")
class BeitProcessor(MaeProcessor):
    """BEiT: blockwise masks over ~40% of the patches. No visual tokenizer ships with modaloom, so no
    ``image_token_labels`` are made; targets regress or tokenise the masked patches themselves."""

    name = "beit"
    Options = BeitOptions
