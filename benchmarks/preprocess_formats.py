"""The same content preprocessed from each input format, side by side:
`python benchmarks/preprocess_formats.py [--lines N] [--images N] [--workers W] [--repeat R]`.

Text group: `lm` (seq length 128, google_zh_vocab) on the lines of book_review_train_bert.txt, written as a
text corpus, JSONL, Parquet, a `datasets` save_to_disk folder and webdataset shards (one `.txt` per
sample, 10,000 samples a shard). Image-text group: `clip` on synthetic 64x64 PNGs with captions, as a TSV
naming the files, Parquet holding the bytes and webdataset shards (`.png` + `.txt`). Every run is the whole
`modaloom preprocess` command; the best of ``--repeat`` runs is kept. Printed: wall seconds, the seconds
preprocess itself took (manifest), records/s, the ratio of both to the text (TSV) path, peak RSS, and the
load average before and after (the machine may be shared). Every input must give byte-identical shards.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shlex
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import SHARED, VOCAB, run_measured  # noqa: E402  (the sibling benchmark's measuring)

CORPUS = SHARED / "corpora" / "book_review_train_bert.txt"
SAMPLES_PER_SHARD = 10_000


def write_shards(folder: Path, stem: str, samples: list[dict[str, bytes]]) -> str:
    """Webdataset shards of ``SAMPLES_PER_SHARD`` samples; returns their brace pattern."""
    count = max(1, -(-len(samples) // SAMPLES_PER_SHARD))
    for shard in range(count):
        with tarfile.open(folder / f"{stem}-{shard:03d}.tar", "w") as archive:
            for sample in samples[shard * SAMPLES_PER_SHARD:(shard + 1) * SAMPLES_PER_SHARD]:
                for field, data in sample.items():
                    if field != "__key__":
                        info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                        info.size = len(data)
                        archive.addfile(info, io.BytesIO(data))
    return str(folder / f"{stem}-{{000..{count - 1:03d}}}.tar")


def text_inputs(folder: Path, lines: int) -> dict[str, str]:
    """The corpus's non-blank lines in every format (the same records, in the same order)."""
    texts = [t for t in CORPUS.read_text(encoding="utf-8").splitlines() if t.strip()][:lines or None]
    paths = {"text": folder / "lines.txt", "jsonl": folder / "lines.jsonl", "parquet": folder / "lines.parquet"}
    paths["text"].write_text("\n".join(texts) + "\n", encoding="utf-8")
    paths["jsonl"].write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                              encoding="utf-8")
    pq.write_table(pa.table({"text": texts}), paths["parquet"])
    inputs = {name: str(path) for name, path in paths.items()}
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder / "lines_hf"))
        inputs["datasets"] = str(folder / "lines_hf")
    except ImportError:
        print("(datasets not installed: no datasets row)")
    samples = [{"__key__": f"{i:08d}", "txt": t.encode("utf-8")} for i, t in enumerate(texts)]
    inputs["webdataset"] = write_shards(folder, "lines", samples)
    return inputs


def image_inputs(folder: Path, images: int) -> dict[str, str]:
    """``images`` small PNGs with captions: a TSV naming the files, Parquet and shards holding the bytes."""
    rng = np.random.default_rng(0)
    captions = [t[:60] for t in CORPUS.read_text(encoding="utf-8").splitlines() if t.strip()]
    (folder / "img").mkdir()
    rows, samples = ["path\tcaption"], []
    for i in range(images):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        (folder / "img" / f"{i}.png").write_bytes(buffer.getvalue())
        caption = captions[i % len(captions)].replace("\t", " ")
        rows.append(f"img/{i}.png\t{caption}")
        samples.append({"__key__": f"{i:08d}", "png": buffer.getvalue(), "txt": caption.encode("utf-8")})
    (folder / "pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"png": [s["png"] for s in samples], "caption": [r.split("\t")[1] for r in rows[1:]]}),
                   folder / "pairs.parquet", row_group_size=1024)
    return {"tsv": str(folder / "pairs.tsv"), "parquet": str(folder / "pairs.parquet"),
            "webdataset": write_shards(folder, "pairs", samples)}


def stored_digest(out: Path) -> str:
    """A hash of every shard file: equal for equal datasets, whatever the input format."""
    digest = hashlib.sha256()
    for path in sorted(out.glob("shard-*/*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def command(processor: str, corpus: str, out: Path, workers: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "modaloom.cli.main", "preprocess", "--processor", processor, "--corpus", corpus,
            "--vocab", str(VOCAB), "--out", str(out), "--workers", str(workers), "--seq-length", "128",
            "--overwrite", *extra]


def compare(tmp: Path, processor: str, inputs: dict[str, str], workers: int, repeat: int,
            options: dict[str, list[str]]) -> None:
    """Run every input, print a row each; the first input is the reference of the ratios."""
    print(f"{'processor':9} {'format':10} {'records':>8} {'wall s':>7} {'prep s':>7} {'records/s':>10} "
          f"{'wall ratio':>10} {'prep ratio':>10} {'peak RSS MB':>11}")
    reference: tuple[float, float] | None = None
    digest_seen = None
    for name, corpus in inputs.items():
        out = tmp / f"out_{processor}_{name}"
        best = None
        for _ in range(repeat):
            wall, peak = run_measured(command(processor, corpus, out, workers, options.get(name, [])))
            seconds = json.loads((out / "manifest.json").read_text())["seconds"]
            if best is None or wall < best[0]:
                best = (wall, seconds, peak)
        wall, seconds, peak = best
        records = json.loads((out / "manifest.json").read_text())["counts"]["records"]
        digest = stored_digest(out)
        if digest_seen is not None and digest != digest_seen:
            raise SystemExit(f"{name}: the stored records differ from those of the {next(iter(inputs))} input")
        digest_seen = digest
        reference = reference or (wall, seconds)
        print(f"{processor:9} {name:10} {records:8d} {wall:7.2f} {seconds:7.2f} {records / wall:10.0f} "
              f"{wall / reference[0]:10.2f} {seconds / reference[1]:10.2f} {peak / 2**20:11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=0, help="text group: first N lines (0 = all, 59,834)")
    parser.add_argument("--images", type=int, default=2000, help="image-text group: images (0 = skip the group)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per input; the fastest is kept")
    args = parser.parse_args()
    if not VOCAB.exists():
        raise SystemExit(f"{VOCAB} not found (../shared beside the repository is needed)")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "text").mkdir()
        compare(tmp, "lm", text_inputs(tmp / "text", args.lines), args.workers, args.repeat, {})
        if args.images:
            (tmp / "images").mkdir()
            compare(tmp, "clip", image_inputs(tmp / "images", args.images), args.workers, args.repeat,
                    {"parquet": ["--option", "image_column=png"]})
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
