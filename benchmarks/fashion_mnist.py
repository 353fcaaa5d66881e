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
from pathlib import Path

from modaloom.data.fashion_mnist import CLASSES, SOURCE, export_split, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SOURCE), help="folder of the idx.gz files")
    parser.add_argument("--out", required=True, help="folder to write the PNG images and list files into")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--dev", type=int, default=1000)
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    train_x, train_y = load_split(source, "train")
    test_x, test_y = load_split(source, "test")
    if args.train + args.dev > len(train_x):
        raise SystemExit(f"--train + --dev exceed the {len(train_x)} training images")
    counts = [export_split(train_x[:args.train], train_y[:args.train], out, "train"),
              export_split(train_x[-args.dev:], train_y[-args.dev:], out, "dev"),
              export_split(test_x[:args.test], test_y[:args.test], out, "test")]
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    print(f"wrote {counts[0]} train, {counts[1]} dev, {counts[2]} test images to {out}")


if __name__ == "__main__":
    main()
