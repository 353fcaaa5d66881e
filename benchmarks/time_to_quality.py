"""Time to quality, two figures side by side with TencentPretrain (docs/benchmarks.md, "Time to quality").

    python benchmarks/time_to_quality.py [--tp DIR --tp-python PATH] [--threads 2] [--parts quality pipeline]
        [--work DIR] [--json PATH] [--quick]

(1) ``quality``: wall seconds from the start of preprocessing until the tiny BERT's MLM loss reaches what
TencentPretrain reaches in 1,000 steps with its defaults. TencentPretrain: ``preprocess.py`` and
``pretrain.py`` with their defaults (dup_factor 5, lr 2e-5, batch 32, seq 128, models/bert/tiny_config.json)
for 1,000 steps; its time is the wall time of both commands and its quality the MLM loss its log reports at
step 1,000. modaloom: ``modaloom preprocess`` and ``modaloom pretrain --config bert/tiny`` with the
documented small-model recipe (``RECIPE``, docs/training.md; nothing tuned for a run), evaluated every
``EVAL_EVERY`` steps on the held-out records of its data (``train.eval_holdout``: the last ``HOLDOUT``
records, the same ones every evaluation and every run); its time is from the start of preprocessing to the
first evaluation whose ``eval/mlm_loss`` is at or below the target. Ratio: TencentPretrain's seconds /
modaloom's (target >= 8).

(2) ``pipeline``: preprocess + pre-train + fine-tune 2 epochs on book_review, to the test accuracy.
TencentPretrain: the commands of (1), then ``finetune/run_classifier.py`` from its 1,000-step model with its
defaults (lr 2e-5, batch 32, seq 128). modaloom: the same pre-training run as (1), whose length is fixed in
advance (``PIPELINE_STEPS``, about twice the steps (1) needs, so that the MLM target is met with room; it
is not stopped when the fine-tune would succeed), then ``modaloom finetune --task classification`` from its
model for 2 epochs at the small-model fine-tuning lr 1e-4 (docs/tasks.md: at the default 2e-5 a tiny BERT
stays on a chance plateau). Ratio: TencentPretrain's total seconds / modaloom's (target >= 3).

Both tools get ``--threads`` threads; the load average during each command is printed beside it, and a
figure taken while the load is above the core count says little. Without a TencentPretrain checkout the
script runs modaloom's side and prints TencentPretrain's reference figures (``REFERENCE``, measured on a
quiet 2-core machine; no ratio is claimed from them). ``--quick`` is a smoke run on tiny slices (2,000
corpus lines, ``QUICK_STEPS`` steps, 64 fine-tuning examples, 1 epoch): its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side  # noqa: E402
from finetune import book_slice, tp_accuracies, tp_classifier_command  # noqa: E402
from side_by_side import SHARED, ZH_VOCAB, Measured, modaloom_command  # noqa: E402
from vs_tencentpretrain import corpus_slice  # noqa: E402

from modaloom.train.config import resolve_precision  # noqa: E402

CORPUS = SHARED / "corpora" / "book_review_train_bert.txt"
TP_STEPS = 1000
# TencentPretrain on this machine kind, quiet, 2 threads (../shared/data/tencentpretrain/README.md and
# benchmarks/finetune.py's side by side): preprocess 4.40 s, 1,000 steps 170 s ending at MLM loss 7.13,
# run_classifier.py 2 epochs 418 s (209 s/epoch) to test accuracy 0.7795
REFERENCE = {"steps": TP_STEPS, "preprocess": 4.40, "pretrain": 170.0, "finetune": 418.0, "mlm_loss": 7.13,
             "test_accuracy": 0.7795}
# The documented small-model pre-training recipe (docs/training.md, "A recipe for small models"): fixed, not
# tuned per run. bf16 autocast is added where the CPU computes bf16 natively (``--precision auto``).
RECIPE = ("--lr", "1e-3", "train.warmup_ratio=0.1")
PIPELINE_STEPS = 100  # (2)'s pre-training budget, fixed in advance: about twice the ~40 steps (1) needs
EVAL_EVERY = 10  # steps between held-out evaluations
HOLDOUT = 256  # held-out records (8 batches of 32): evaluated whole each time
FINETUNE_LR = "1e-4"  # docs/tasks.md: the fine-tuning lr for small BERTs
QUICK_STEPS = 6
TP_LOG = re.compile(r"\|\s*(\d+)/\s*\d+ steps.*?loss_mlm: ([0-9.]+)")


def tp_mlm_loss_at(log: str, step: int) -> float | None:
    """The MLM loss TencentPretrain's log reports at ``step`` (None when it reports no such step)."""
    losses = {int(s): float(v) for s, v in TP_LOG.findall(log)}
    return losses.get(step)


def first_time_at_or_below(metrics: Path, key: str, target: float, start: float) -> dict[str, Any] | None:
    """The first row of ``metrics.jsonl`` whose ``key`` is <= ``target``: its step, value and seconds since
    ``start`` (unix time); None when no row gets there."""
    for line in metrics.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if key in row and row[key] <= target:
            return {"step": row["step"], "value": row[key], "seconds": row["time"] - start}
    return None


def pretrain_args(steps: int, precision: str, eval_every: int, holdout: int) -> list[str]:
    """``modaloom pretrain`` options of the recipe for the tiny BERT on google_zh_vocab (21,128 words)."""
    return ["--steps", str(steps), "--precision", precision, *RECIPE, f"train.eval_every={eval_every}",
            f"train.eval_holdout={holdout}", "train.eval_batches=0", "model.embedding.vocab_size=21128",
            "train.progress=false", "train.tensorboard=false"]


def finetune_args(model: Path, train: Path, dev: Path, test: Path, out: Path, epochs: int) -> list[str]:
    """``modaloom finetune`` options: book_review classification from ``model``, batch 32, seq 128."""
    return ["finetune", "--task", "classification", "--model", str(model), "--vocab", str(ZH_VOCAB), "--train",
            str(train), "--dev", str(dev), "--test", str(test), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "32", "--seq-length", "128", "--lr", FINETUNE_LR, "train.progress=false",
            "train.tensorboard=false"]


def mean_load(*runs: Measured) -> float:
    """The load average over several commands, weighted by their wall time."""
    return sum(r.load * r.wall for r in runs) / max(sum(r.wall for r in runs), 1e-9)


def run_tencentpretrain(tp: Path, tp_python: str, work: Path, threads: int, corpus: Path, steps: int,
                        book: tuple[Path, Path, Path], epochs: int, parts: list[str]) -> dict[str, Any]:
    """TencentPretrain's preprocess and pre-training with its defaults, then (``pipeline``) run_classifier.py."""
    dataset, model = work / "tp_dataset.pt", work / "tp_model.bin"
    pre = side_by_side.run_measured([tp_python, "preprocess.py", "--corpus_path", str(corpus), "--vocab_path",
                                     str(ZH_VOCAB), "--dataset_path", str(dataset), "--processes_num", str(threads),
                                     "--data_processor", "bert"], threads, cwd=tp)
    train = side_by_side.run_measured([tp_python, "pretrain.py", "--dataset_path", str(dataset), "--vocab_path",
                                       str(ZH_VOCAB), "--config_path", "models/bert/tiny_config.json",
                                       "--output_model_path", str(model), "--total_steps", str(steps),
                                       "--save_checkpoint_steps", str(steps), "--report_steps",
                                       str(min(100, steps))], threads, cwd=tp)
    loss = tp_mlm_loss_at(train.output, steps)
    if loss is None:
        raise SystemExit(f"TencentPretrain's log has no loss_mlm at step {steps}:\n{train.output[-2000:]}")
    result: dict[str, Any] = {"steps": steps, "preprocess": pre.wall, "pretrain": train.wall, "mlm_loss": loss,
                              "quality_seconds": pre.wall + train.wall, "quality_load": mean_load(pre, train),
                              "pretrain_peak_rss_mb": train.peak_rss_mb}
    if "pipeline" in parts:
        train_tsv, dev, test = book
        command = tp_classifier_command(work, train_tsv, dev, test, epochs, tp_python, checkpoint=f"{model}-{steps}",
                                        config="models/bert/tiny_config.json")
        fine = side_by_side.run_measured(command, threads, cwd=tp)
        result.update(finetune=fine.wall, test_accuracy=tp_accuracies(fine.output)[1],
                      pipeline_seconds=pre.wall + train.wall + fine.wall, pipeline_load=mean_load(pre, train, fine))
    return result


def run_modaloom(work: Path, threads: int, corpus: Path, steps: int, target: float, precision: str,
                 book: tuple[Path, Path, Path], epochs: int, parts: list[str], quick: bool) -> dict[str, Any]:
    """modaloom's preprocess and recipe pre-training (evaluated on the held-out records), then (``pipeline``)
    the fine-tuning; seconds of each command and when the held-out MLM loss first reached ``target``."""
    data, out, fine_out = work / "ml_data", work / "ml_run", work / "ml_finetune"
    for folder in (out, fine_out):
        if folder.exists():
            shutil.rmtree(folder)
    eval_every, holdout = (2, 8) if quick else (EVAL_EVERY, HOLDOUT)
    start = time.time()
    pre = side_by_side.run_measured(modaloom_command(
        "preprocess", "--processor", "bert", "--corpus", str(corpus), "--vocab", str(ZH_VOCAB), "--out", str(data),
        "--workers", str(threads), "--overwrite"), threads)
    train = side_by_side.run_measured(modaloom_command(
        "pretrain", "--config", "bert/tiny", "--data", str(data), "--out", str(out),
        *pretrain_args(steps, precision, eval_every, holdout)), threads)
    reached = first_time_at_or_below(out / "metrics.jsonl", "eval/mlm_loss", target, start)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {"preprocess": pre.wall, "pretrain": train.wall, "steps": steps,
                              "precision": precision, "reached": reached,
                              "real_tokens_per_second": summary.get("real_tokens_per_second"),
                              "quality_load": mean_load(pre, train), "pretrain_peak_rss_mb": train.peak_rss_mb,
                              "allocator": summary.get("allocator")}
    if "pipeline" in parts:
        fine = side_by_side.run_measured(modaloom_command(*finetune_args(out / "model", *book, fine_out, epochs)),
                                         threads)
        fine_summary = json.loads((fine_out / "summary.json").read_text(encoding="utf-8"))
        result.update(finetune=fine.wall, test_accuracy=fine_summary["test/accuracy"],
                      pipeline_seconds=pre.wall + train.wall + fine.wall, pipeline_load=mean_load(pre, train, fine))
    return result


def report(theirs: dict[str, Any] | None, ours: dict[str, Any], target: float, parts: list[str],
           threads: int) -> dict[str, Any]:
    """Print both figures side by side (TencentPretrain's reference figures without a checkout); the result."""
    ref = theirs is None
    tp = theirs or {**REFERENCE, "quality_seconds": REFERENCE["preprocess"] + REFERENCE["pretrain"],
                    "pipeline_seconds": REFERENCE["preprocess"] + REFERENCE["pretrain"] + REFERENCE["finetune"]}
    where = {part: "reference figures, quiet 2-core machine" if ref else f"load {tp.get(part + '_load', 0):.2f}"
             for part in ("quality", "pipeline")}
    result: dict[str, Any] = {"target_mlm_loss": target, "threads": threads, "load_now": os.getloadavg()[0],
                              "cores": os.cpu_count(), "tencentpretrain": tp, "tencentpretrain_measured": not ref,
                              "modaloom": ours}
    print(f"{threads} thread(s), {os.cpu_count()} cores; modaloom pre-training: bert/tiny, {' '.join(RECIPE)}, "
          f"{ours['precision']}, {ours['steps']} steps")
    print(f"(1) MLM loss {target:.3f}: TencentPretrain {tp['quality_seconds']:.1f} s (preprocess "
          f"{tp['preprocess']:.1f} + {tp['steps']} steps {tp['pretrain']:.1f}; {where['quality']})")
    reached = ours["reached"]
    if reached:
        print(f"    modaloom: held-out MLM loss {reached['value']:.3f} at step {reached['step']}, "
              f"{reached['seconds']:.1f} s after the start of preprocessing (preprocess {ours['preprocess']:.1f} s; "
              f"load {ours['quality_load']:.2f})")
        if not ref:
            result["quality_ratio"] = tp["quality_seconds"] / reached["seconds"]
            print(f"    time to quality: {result['quality_ratio']:.2f}x TencentPretrain (target >= 8x)")
    else:
        print(f"    modaloom: held-out MLM loss did not reach {target:.3f} in {ours['steps']} steps")
    if not ref:
        print(f"    pre-training peak RSS (process tree): TencentPretrain {tp['pretrain_peak_rss_mb']:.0f} MiB, "
              f"modaloom {ours['pretrain_peak_rss_mb']:.0f} MiB ({ours['steps']} steps, malloc: "
              f"{ours.get('allocator') or 'system'}); {tp['pretrain_peak_rss_mb'] / ours['pretrain_peak_rss_mb']:.2f}x "
              "less")
    if "pipeline" in parts:
        print(f"(2) preprocess + pre-train + fine-tune: TencentPretrain {tp['pipeline_seconds']:.1f} s "
              f"(fine-tune {tp['finetune']:.1f}), test accuracy {tp['test_accuracy']:.4f} ({where['pipeline']})")
        print(f"    modaloom {ours['pipeline_seconds']:.1f} s (preprocess {ours['preprocess']:.1f} + pre-train "
              f"{ours['pretrain']:.1f} + fine-tune {ours['finetune']:.1f}), test accuracy "
              f"{ours['test_accuracy']:.4f} (load {ours['pipeline_load']:.2f})")
        if not ref:
            result["pipeline_ratio"] = tp["pipeline_seconds"] / ours["pipeline_seconds"]
            print(f"    end to end: {result['pipeline_ratio']:.2f}x TencentPretrain (target >= 3x, at test accuracy "
                  f">= TencentPretrain's)")
    if ref:
        print("    (no ratio claimed: TencentPretrain was not run side by side; pass --tp)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=Path, help="TencentPretrain checkout (optional: else its reference figures)")
    parser.add_argument("--tp-python", default=sys.executable)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=("quality", "pipeline"), default=["quality", "pipeline"])
    parser.add_argument("--steps", type=int, help=f"modaloom's pre-training steps (default {PIPELINE_STEPS}, "
                        "the pipeline's fixed budget)")
    parser.add_argument("--target", type=float, help="MLM loss to reach (default: TencentPretrain's, or 7.13)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="modaloom's pre-training precision (auto: bf16 where the CPU has it natively)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/modaloom-time-to-quality"))
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--quick", action="store_true", help="smoke run on tiny slices (figures mean nothing)")
    args = parser.parse_args(argv)
    if args.tp is not None:
        problem = side_by_side.tp_problem(args.tp, args.tp_python)
        if problem:
            print(f"{problem}\n\n{side_by_side.TP_SETUP}", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = corpus_slice(args.work, 2000) if args.quick else CORPUS
    book = book_slice(args.work, 64 if args.quick else 0)
    epochs, tp_steps = (1, QUICK_STEPS) if args.quick else (2, TP_STEPS)
    steps = args.steps or (QUICK_STEPS if args.quick else PIPELINE_STEPS)
    precision = resolve_precision(args.precision, "cpu")  # what `--precision auto` settles to here
    theirs = None
    if args.tp is not None:
        theirs = run_tencentpretrain(args.tp.resolve(), args.tp_python, args.work, args.threads, corpus, tp_steps,
                                     book, epochs, args.parts)
    target = args.target or (theirs["mlm_loss"] if theirs else REFERENCE["mlm_loss"])
    ours = run_modaloom(args.work, args.threads, corpus, steps, target, precision, book, epochs, args.parts,
                        args.quick)
    result = report(theirs, ours, target, args.parts, args.threads)
    if args.quick:
        print("(QUICK: smoke only, the figures mean nothing)")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
