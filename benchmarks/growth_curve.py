"""Growth curve: a deeper model grown from a trained shallow one vs the same deeper model from scratch.

    python benchmarks/growth_curve.py [--lines 3000] [--small-steps 100] [--steps 100] [--batch-size 8] [--long] [--threads 2] [--work DIR]

Data: the first ``--lines`` lines of the shared book-review corpus (``../shared/data/tencentpretrain``), read by
``modaloom preprocess --processor lm`` with the shared Chinese vocabulary, 64 tokens per example. Model: a tiny
pre-norm causal LM (GPT-2 layout: word + pos embeddings, layernorm, gelu; width 64, 2 heads, feed-forward 128).

1. ``small``: 2 layers, ``--small-steps`` steps.
2. ``modaloom grow --depth 2 --ffn-size 256`` of it: 4 layers, feed-forward 256, function-preserving.
3. ``grown``: the grown folder trained ``--steps`` more steps (``pretrain --init-from``).
4. ``scratch``: the same 4-layer, 256-wide model from a random start, ``--steps`` steps.
5. with ``--long``: ``scratch-long``, the same for ``--small-steps + --steps`` steps (as many steps as small and
   grown together, each a 4-layer step: more compute than the grown route).

Both runs of step 3 and 4 use the same data order, learning rate and schedule; the script prints the training
loss of each at a few steps and the held-out loss at the end (``train.eval_holdout`` records, the same for both).
The grown run's extra cost is the small run (cheaper per step: fewer layers, narrower feed-forward).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

SHARED = ROOT.parent / "shared" / "data" / "tencentpretrain"
CORPUS = SHARED / "corpora" / "book_review_train_bert.txt"
VOCAB = SHARED / "models" / "google_zh_vocab.txt"
SEQ = 64


def model_section(layers: int, ffn: int) -> dict:
    return {
        "embedding": {"parts": ["word", "pos"], "vocab_size": 0, "emb_size": 64, "max_seq_length": SEQ,
                      "dropout": 0.0},
        "encoder": {"hidden_size": 64, "layers_num": layers, "heads_num": 2, "feedforward_size": ffn,
                    "norm_position": "pre", "mask": "causal", "dropout": 0.0},
        "targets": [{"type": "lm"}],
    }


def write_config(path: Path, layers: int, ffn: int, steps: int, batch: int) -> Path:
    train = {"steps": steps, "batch_size": batch, "lr": 1e-3, "warmup_steps": 0, "log_every": 10,
             "eval_every": steps, "eval_holdout": 64, "eval_batches": 0, "progress": False,
             "tensorboard": False, "seed": 1}
    config = {"model": model_section(layers, ffn), "data": {"seq_length": SEQ}, "train": train}
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def cli(*args: str) -> None:
    from modaloom.cli.main import main

    code = main(list(args))
    if code:
        raise SystemExit(f"modaloom {' '.join(args)} exited with {code}")


def losses(run: Path) -> tuple[dict[int, float], float | None]:
    """Training loss by step and the last held-out loss, from a run's metrics.jsonl."""
    train, held_out = {}, None
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        step = record.get("step")
        if "loss" in record and step is not None:
            train[int(step)] = float(record["loss"])
        for key, value in record.items():
            if key.startswith("eval/") and key.endswith("loss") and "lm" in key:
                held_out = float(value)
    return train, held_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--small-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long", action="store_true", help="also train scratch for small-steps + steps steps")
    parser.add_argument("--work", type=Path, help="folder for data and runs (default: a temporary one)")
    args = parser.parse_args()
    if not CORPUS.is_file():
        raise SystemExit(f"the shared corpus {CORPUS} is missing; this benchmark reads ../shared")
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.txt"
        with CORPUS.open(encoding="utf-8") as f:
            corpus.write_text("".join(line for _, line in zip(range(args.lines), f)), encoding="utf-8")
        data = work / "data"
        cli("preprocess", "--processor", "lm", "--corpus", str(corpus), "--vocab", str(VOCAB), "--out", str(data),
            "--seq-length", str(SEQ), "--overwrite")
        small = write_config(work / "small.json", 2, 128, args.small_steps, args.batch_size)
        big = write_config(work / "big.json", 4, 256, args.steps, args.batch_size)
        cli("pretrain", "--config", str(small), "--data", str(data), "--out", str(work / "small"))
        cli("grow", str(work / "small" / "model"), str(work / "grown-init"), "--depth", "2", "--ffn-size", "256",
            "--overwrite")
        cli("pretrain", "--config", str(big), "--data", str(data), "--out", str(work / "grown"),
            "--init-from", str(work / "grown-init"))
        cli("pretrain", "--config", str(big), "--data", str(data), "--out", str(work / "scratch"))
        long_steps = args.small_steps + args.steps
        if args.long:
            longer = write_config(work / "big-long.json", 4, 256, long_steps, args.batch_size)
            cli("pretrain", "--config", str(longer), "--data", str(data), "--out", str(work / "scratch-long"))
            long_train, long_eval = losses(work / "scratch-long")
        small_train, small_eval = losses(work / "small")
        grown_train, grown_eval = losses(work / "grown")
        scratch_train, scratch_eval = losses(work / "scratch")
    print(f"\nsmall (2 layers, ffn 128): {args.small_steps} steps, final train loss "
          f"{small_train[max(small_train)]:.3f}, held-out {small_eval:.3f}")
    print(f"{'step':>6} {'grown':>8} {'scratch':>8}")
    marks = sorted(set(grown_train) & set(scratch_train))
    shown = [s for s in marks if s in (marks[0], marks[-1]) or s % max(args.steps // 5, 1) == 0]
    for step in shown:
        print(f"{step:>6} {grown_train[step]:>8.3f} {scratch_train[step]:>8.3f}")
    print(f"{'eval':>6} {grown_eval:>8.3f} {scratch_eval:>8.3f}  (held-out lm loss after {args.steps} steps)")
    if args.long:
        print(f"scratch-long: {long_steps} steps, final train loss {long_train[max(long_train)]:.3f}, "
              f"held-out {long_eval:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
