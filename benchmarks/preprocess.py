"""Preprocessing speed and memory: `python benchmarks/preprocess.py [--memory] [--memory-mb N] [--long-lines]`.

Throughput mode runs `modaloom preprocess` (bert and lm, 1 and 2 workers, seq length 128, google_zh_vocab)
on the shared TencentPretrain corpora and prints wall time (whole command, output included), records/s,
tokens/s and the peak RSS of the whole process tree. Memory mode preprocesses a synthetic corpus of N MB
and of 10 N MB and compares peak RSS. Long-lines mode times bert and albert on documents that are one
very long line (1, 2 and 5 MB, generated): the time must grow linearly with the line length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import side_by_side

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tencentpretrain"
VOCAB = SHARED / "models" / "google_zh_vocab.txt"
RUNS = [("bert", "book_review_train_bert.txt"), ("bert", "CLUECorpusSmall_bert_sampled.txt"),
        ("lm", "book_review_train_bert.txt"), ("lm", "CLUECorpusSmall_sampled.txt")]


def run_measured(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of the whole process tree (``side_by_side.run_measured``)."""
    measured = side_by_side.run_measured(args, threads=os.cpu_count() or 1)
    return measured.wall, int(measured.peak_rss_mb * 2**20)


def preprocess_args(processor: str, corpus: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "modaloom.cli.main", "preprocess", "--processor", processor, "--corpus",
            str(corpus), "--vocab", str(VOCAB), "--out", str(out), "--workers", str(workers),
            "--seq-length", "128", "--overwrite"]


def throughput(tmp: Path) -> None:
    print(f"{'processor':9} {'corpus':34} {'workers':>7} {'wall s':>7} {'records/s':>10} {'tokens/s':>10} "
          f"{'peak RSS MB':>11}")
    for processor, name in RUNS:
        corpus = SHARED / "corpora" / name
        for workers in (1, 2):
            out = tmp / f"{processor}_{workers}"
            wall, peak = run_measured(preprocess_args(processor, corpus, out, workers))
            counts = json.loads((out / "manifest.json").read_text())["counts"]
            print(f"{processor:9} {name:34} {workers:7d} {wall:7.2f} {counts['records'] / wall:10.0f} "
                  f"{counts['tokens'] / wall:10.0f} {peak / 2**20:11.0f}")


def synthetic_corpus(path: Path, megabytes: int) -> None:
    """Repeat the CLUE corpus lines (shifted each pass so texts differ) until ``megabytes``."""
    lines = (SHARED / "corpora" / "CLUECorpusSmall_sampled.txt").read_text(encoding="utf-8").splitlines()
    target = megabytes << 20
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        shift = 0
        while written < target:
            for line in lines:
                text = line[shift % max(1, len(line)):] + line[:shift % max(1, len(line))] + "\n"
                out.write(text)
                written += len(text.encode("utf-8"))
                if written >= target:
                    break
            shift += 7


def memory(tmp: Path, megabytes: int, workers: int) -> None:
    peaks = []
    for size in (megabytes, 10 * megabytes):
        corpus = tmp / f"synthetic_{size}mb.txt"
        synthetic_corpus(corpus, size)
        wall, peak = run_measured(preprocess_args("lm", corpus, tmp / f"mem_{size}", workers))
        peaks.append(peak)
        print(f"lm, {size} MB synthetic corpus, {workers} workers: {wall:.1f} s, peak RSS {peak / 2**20:.0f} MB")
        corpus.unlink()
    print(f"peak RSS change for 10x the corpus: {100 * (peaks[1] - peaks[0]) / peaks[0]:+.1f}%")


def long_line_corpus(path: Path, megabytes: int) -> None:
    """Two documents: a short line, a line of ``megabytes`` MB (CLUE text joined), a short line; then a short
    document (the other document bert draws random next segments from)."""
    text = "".join((SHARED / "corpora" / "CLUECorpusSmall_sampled.txt").read_text(encoding="utf-8").split())
    target = megabytes << 20
    line = (text * (target // len(text.encode("utf-8")) + 1)).encode("utf-8")[:target].decode("utf-8", "ignore")
    short = [text[i:i + 40] for i in range(0, 200, 40)]
    path.write_text(f"{short[0]}\n{line}\n{short[1]}\n\n{short[2]}\n{short[3]}\n{short[4]}\n", encoding="utf-8")


def long_lines(tmp: Path) -> None:
    print(f"{'processor':9} {'line MB':>7} {'wall s':>7} {'records':>7}")
    for megabytes in (1, 2, 5):
        corpus = tmp / f"long_{megabytes}mb.txt"
        long_line_corpus(corpus, megabytes)
        for processor in ("bert", "albert"):
            out = tmp / f"long_{processor}_{megabytes}"
            wall, _ = run_measured(preprocess_args(processor, corpus, out, 1))
            records = json.loads((out / "manifest.json").read_text())["counts"]["records"]
            print(f"{processor:9} {megabytes:7d} {wall:7.2f} {records:7d}")
        corpus.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory", action="store_true", help="run the memory check instead of throughput")
    parser.add_argument("--memory-mb", type=int, default=20, help="small corpus size (the large one is 10x)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--long-lines", action="store_true", help="time bert/albert on 1, 2 and 5 MB lines")
    args = parser.parse_args()
    if not VOCAB.exists():
        raise SystemExit(f"{VOCAB} not found (../shared beside the repository is needed)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            memory(Path(tmp), args.memory_mb, args.workers)
        elif args.long_lines:
            long_lines(Path(tmp))
        else:
            throughput(Path(tmp))


if __name__ == "__main__":
    main()
