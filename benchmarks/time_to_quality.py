"""Time to quality: wall seconds until the tiny BERT's MLM loss reaches what TencentPretrain reaches in 1,000 steps.

    python benchmarks/time_to_quality.py [--tp DIR --tp-python PATH] [--threads 2] [--steps 1000] [--work DIR]

TencentPretrain (optional; a checkout at ed79843 as ``benchmarks/vs_tencentpretrain.py`` documents): its
``preprocess.py`` and ``pretrain.py`` with their defaults (dup_factor 5, lr 2e-5, batch 32, seq 128,
models/bert/tiny_config.json) for 1,000 steps; its time is the wall time of both commands and its quality the
MLM loss its log reports at step 1,000 (mean of its last 100 steps). Without a checkout the target is the
reference figure, 7.13 (../shared/data/tencentpretrain/README.md), and no ratio is printed.

modaloom: ``modaloom preprocess --processor bert`` and ``modaloom pretrain --config bert/tiny`` with their
documented defaults (nothing tuned for this run), evaluated every ``--eval-every`` steps on the held-out
records of the data (``train.eval_holdout``: the same fixed records every evaluation and every run). Its time
to quality is the wall time from the start of preprocessing to the first evaluation whose ``eval/mlm_loss`` is
at or below the target. The ratio is TencentPretrain's seconds / modaloom's (target >= 8). Both tools get
``--threads`` threads; the load average during each run is printed with it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side  # noqa: E402
from side_by_side import SHARED, ZH_VOCAB, modaloom_command  # noqa: E402

CORPUS = SHARED / "corpora" / "book_review_train_bert.txt"
REFERENCE_MLM_LOSS = 7.13  # TencentPretrain, 1,000 steps with its defaults (shared README)
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


def run_tencentpretrain(tp: Path, tp_python: str, work: Path, threads: int, steps: int) -> dict[str, Any]:
    dataset = work / "tp_dataset.pt"
    pre = side_by_side.run_measured([tp_python, "preprocess.py", "--corpus_path", str(CORPUS), "--vocab_path",
                                     str(ZH_VOCAB), "--dataset_path", str(dataset), "--processes_num", str(threads),
                                     "--data_processor", "bert"], threads, cwd=tp)
    train = side_by_side.run_measured([tp_python, "pretrain.py", "--dataset_path", str(dataset), "--vocab_path",
                                       str(ZH_VOCAB), "--config_path", "models/bert/tiny_config.json",
                                       "--output_model_path", str(work / "tp_model.bin"), "--total_steps", str(steps),
                                       "--save_checkpoint_steps", str(steps), "--report_steps", "100"], threads, cwd=tp)
    loss = tp_mlm_loss_at(train.output, steps)
    if loss is None:
        raise SystemExit(f"TencentPretrain's log has no loss_mlm at step {steps}:\n{train.output[-2000:]}")
    return {"seconds": pre.wall + train.wall, "mlm_loss": loss, "load": (pre.load + train.load) / 2,
            "peak_rss_mb": train.peak_rss_mb}


def run_modaloom(work: Path, threads: int, steps: int, eval_every: int, target: float) -> dict[str, Any]:
    data, out = work / "ml_data", work / "ml_run"
    if out.exists():
        shutil.rmtree(out)
    start = time.time()
    pre = side_by_side.run_measured(modaloom_command(
        "preprocess", "--processor", "bert", "--corpus", str(CORPUS), "--vocab", str(ZH_VOCAB), "--out", str(data),
        "--workers", str(threads), "--overwrite"), threads)
    train = side_by_side.run_measured(modaloom_command(
        "pretrain", "--config", "bert/tiny", "--data", str(data), "--out", str(out), "--steps", str(steps),
        f"train.eval_every={eval_every}", "model.embedding.vocab_size=21128", "train.progress=false"), threads)
    reached = first_time_at_or_below(out / "metrics.jsonl", "eval/mlm_loss", target, start)
    return {"reached": reached, "load": (pre.load + train.load) / 2, "peak_rss_mb": train.peak_rss_mb,
            "total_seconds": pre.wall + train.wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=Path, help="TencentPretrain checkout (optional: else the reference loss)")
    parser.add_argument("--tp-python", default=sys.executable)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000, help="TencentPretrain's steps, and modaloom's at most")
    parser.add_argument("--eval-every", type=int, default=50, help="modaloom: steps between held-out evaluations")
    parser.add_argument("--target", type=float, help="MLM loss to reach (default: TencentPretrain's, or 7.13)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/modaloom-time-to-quality"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    theirs = None
    if args.tp is not None:
        problem = side_by_side.tp_problem(args.tp, args.tp_python)
        if problem:
            print(f"{problem}\n\n{side_by_side.TP_SETUP}", file=sys.stderr)
            return 2
        theirs = run_tencentpretrain(args.tp.resolve(), args.tp_python, args.work, args.threads, args.steps)
    target = args.target or (theirs["mlm_loss"] if theirs else REFERENCE_MLM_LOSS)
    ours = run_modaloom(args.work, args.threads, args.steps, args.eval_every, target)
    result = {"target_mlm_loss": target, "tencentpretrain": theirs, "modaloom": ours, "threads": args.threads}
    if theirs:
        print(f"TencentPretrain: MLM loss {theirs['mlm_loss']:.3f} after {args.steps} steps, {theirs['seconds']:.1f} s "
              f"(preprocess + pre-train), load {theirs['load']:.2f}")
    if ours["reached"]:
        r = ours["reached"]
        print(f"modaloom: held-out MLM loss {r['value']:.3f} <= {target:.3f} at step {r['step']}, {r['seconds']:.1f} s "
              f"after the start of preprocessing, load {ours['load']:.2f}")
        if theirs:
            result["ratio"] = theirs["seconds"] / r["seconds"]
            print(f"time to quality: {result['ratio']:.2f}x TencentPretrain (target >= 8x)")
    else:
        print(f"modaloom: held-out MLM loss did not reach {target:.3f} in {args.steps} steps")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
