"""Export Fashion-MNIST (idx.gz files) as PNG images and list files for the image tasks.

    python benchmarks/fashion_mnist.py --source /usr/share/datasets/fashion-mnist --out /tmp/fmnist \
        --train 6000 --dev 1000 --test 2000

writes ``<out>/{train,dev,test}/N.png`` and, beside them, ``train.tsv`` / ``dev.tsv`` / ``test.tsv`` with the
header ``label path`` (class names as labels, for ``image_classification`` and ``evaluate --task zero_shot``)
and ``train_pairs.tsv`` / ``dev_pairs.tsv`` / ``test_pairs.tsv`` with ``text path`` captions
("a photo of a {class}", for ``clip_retrieval``), plus ``classes.txt``. Dev images come from the end of the
training set; test images from the official test set. The first N of each set are taken.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip-compressed) as a uint8 array: images (N, rows, cols) or labels (N,)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def export(images: np.ndarray, labels: np.ndarray, out: Path, name: str) -> int:
    """PNG files under ``out/name/`` and the two list files; returns the number written."""
    (out / name).mkdir(parents=True, exist_ok=True)
    classified, pairs = ["label\tpath"], ["text\tpath"]
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(pixels, mode="L").save(out / name / f"{i}.png")
        classified.append(f"{CLASSES[label]}\t{name}/{i}.png")
        pairs.append(f"a photo of a {CLASSES[label]}\t{name}/{i}.png")
    (out / f"{name}.tsv").write_text("\n".join(classified) + "\n", encoding="utf-8")
    (out / f"{name}_pairs.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder of the idx.gz files")
    parser.add_argument("--out", required=True, help="folder to write the PNG images and list files into")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--dev", type=int, default=1000)
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    train_x = read_idx(source / "train-images-idx3-ubyte.gz")
    train_y = read_idx(source / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(source / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    if args.train + args.dev > len(train_x):
        raise SystemExit(f"--train + --dev exceed the {len(train_x)} training images")
    counts = [export(train_x[:args.train], train_y[:args.train], out, "train"),
              export(train_x[-args.dev:], train_y[-args.dev:], out, "dev"),
              export(test_x[:args.test], test_y[:args.test], out, "test")]
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    print(f"wrote {counts[0]} train, {counts[1]} dev, {counts[2]} test images to {out}")


if __name__ == "__main__":
    main()
