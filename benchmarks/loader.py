"""Loader throughput: batches/s of a ``bert`` dataset (dynamic masking, padding) with 0, 1 and 2 workers.

    .venv/bin/python benchmarks/loader.py [--corpus PATH] [--vocab PATH] [--batches 300]

Builds the dataset once from TencentPretrain's book_review_train_bert.txt (../shared) into a temporary
folder, then times ``--batches`` batches per worker count after the first one (worker start-up is shown
separately as the time to the first batch).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from modaloom.data.loader import build_loader
from modaloom.data.processors.base import SourceRecord, build_processor
from modaloom.data.readers import read_corpus
from modaloom.data.storage import DatasetWriter
from modaloom.data.tokenizers import load_tokenizer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tencentpretrain"


def build_bert_dataset(corpus: Path, vocab: Path, out: Path, seq_length: int, chunk: int = 2000) -> int:
    """Preprocess in this process (the preprocess CLI is benchmarked elsewhere); returns the record count."""
    tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    processor = build_processor("bert", tokenizer, seq_length)
    records = (r for r in read_corpus(corpus, processor.input_kind) if isinstance(r, SourceRecord))
    with DatasetWriter(out, processor.fields) as writer:
        for number in itertools.count():
            block = list(itertools.islice(records, chunk))
            if not block:
                break
            result = processor.process_chunk(block, number)
            writer.add_batch(result.batch)
        tokenizer.save(writer.path / "tokenizer")
        writer.close({"processor": processor.manifest_entry()})
        return writer.count


def time_loader(data: Path, workers: int, batch_size: int, batches: int, padding: str) -> tuple[float, float]:
    """(seconds to the first batch, batches/s over the next ``batches``)."""
    loader = build_loader(data, batch_size=batch_size, seed=1, num_workers=workers, padding=padding)
    stream = loader.forever()
    start = time.perf_counter()
    next(stream)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return first, batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpora" / "book_review_train_bert.txt")
    parser.add_argument("--vocab", type=Path, default=SHARED / "models" / "google_zh_vocab.txt")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--padding", default="max_length", choices=("longest", "max_length"))
    args = parser.parse_args()
    if not args.corpus.exists() or not args.vocab.exists():
        raise SystemExit(f"needs {args.corpus} and {args.vocab} (../shared is absent)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bert"
        start = time.perf_counter()
        count = build_bert_dataset(args.corpus, args.vocab, data, args.seq_length)
        print(f"dataset: {count} bert records from {args.corpus.name} in {time.perf_counter() - start:.1f} s")
        print(f"batch {args.batch_size}, seq {args.seq_length}, padding {args.padding}, {args.batches} batches")
        print(f"{'workers':>7} | {'first batch s':>13} | {'batches/s':>9} | {'tokens/s':>10}")
        for workers in (0, 1, 2):
            first, rate = time_loader(data, workers, args.batch_size, args.batches, args.padding)
            tokens = rate * args.batch_size * args.seq_length
            print(f"{workers:>7} | {first:>13.3f} | {rate:>9.1f} | {tokens:>10,.0f}")


if __name__ == "__main__":
    main()
