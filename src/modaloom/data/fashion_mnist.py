"""Fashion-MNIST (Debian ``dataset-fashion-mnist``): read the idx.gz files and export PNG images + list files.

The PNG + TSV form is what modaloom's image commands read: ``<name>.tsv`` with header ``label path`` (class
names as labels, for ``image_classification`` and ``evaluate --task zero_shot``) and ``<name>_pairs.tsv`` with
``text path`` captions ("a photo of a {class}", for ``clip_retrieval``). Used by the vision demo stage and by
``benchmarks/fashion_mnist.py``.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from modaloom.errors import DataError

SOURCE = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist installs the files
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (gzip-compressed) as a uint8 array: images (N, rows, cols) or labels (N,)."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the gzip-compressed idx file: {exc}") from exc
    if len(data) < 4:
        raise DataError(f"{path}: not an idx file ({len(data)} bytes)")
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08 or dims < 1 or len(data) < 4 + 4 * dims:
        raise DataError(f"{path}: not an idx file of unsigned bytes (header {data[:4].hex()})")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    expected = 4 + 4 * dims + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path}: idx header says shape {shape} ({expected} bytes) but the file holds {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(source: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28), labels (N,)) of the official ``train`` or ``test`` split in ``source``."""
    if split not in FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; valid choices: {', '.join(FILES)}")
    source = Path(source)
    missing = [name for name in FILES[split] if not (source / name).is_file()]
    if missing:
        raise DataError(f"{source}: Fashion-MNIST file(s) {', '.join(missing)} not found; install them with "
                        f"`apt-get install {DEBIAN_PACKAGE}` (or pass the folder holding them)")
    images, labels = (read_idx(source / name) for name in FILES[split])
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def export_split(images: np.ndarray, labels: np.ndarray, out: str | Path, name: str,
                 classes: Sequence[str] = CLASSES) -> int:
    """``out/name/<i>.png`` for every image plus ``out/name.tsv`` and ``out/name_pairs.tsv``; returns the count.

    Paths in the lists are relative to ``out`` (the lists' folder), as the image readers resolve them.
    """
    out = Path(out)
    (out / name).mkdir(parents=True, exist_ok=True)
    classified, pairs = ["label\tpath"], ["text\tpath"]
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        if not 0 <= int(label) < len(classes):
            raise DataError(f"{name} image {i}: label {int(label)} outside the {len(classes)} classes")
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out / name / f"{i}.png")
        classified.append(f"{classes[label]}\t{name}/{i}.png")
        pairs.append(f"a photo of a {classes[label]}\t{name}/{i}.png")
    (out / f"{name}.tsv").write_text("\n".join(classified) + "\n", encoding="utf-8")
    (out / f"{name}_pairs.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    return len(images)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed idx file (tests make tiny synthetic datasets with it)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())
