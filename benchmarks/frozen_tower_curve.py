"""Frozen-tower curve (LiT "Lu"): a CLIP whose image tower is loaded from a trained model and locked, versus the
same CLIP from scratch, with the same steps, batch, lr, seed and data.

    python benchmarks/frozen_tower_curve.py --work DIR [--size quick|small] [--tower-steps N] [--threads 1]

Data: the vision-language demo's captioned Fashion-MNIST (``demo.vision_language.write_data``), a WordPiece
vocabulary of its training captions. Model: the demo's small CLIP (``vision_language.clip_config``).

1. ``tower``: the CLIP trained from random init for ``--tower-steps`` steps on the training pairs. It is the source
   of the pre-trained image tower: the only image model here whose shapes, patching and pixel normalisation are
   those of the CLIP's vision stream (the demo's MAE ViT has 3-channel ``mae``-normalised inputs, no embedding
   norm and a 4x feed-forward, so its weights do not fit ``clip_config``'s stream).
2. ``lit``: a fresh CLIP, ``train.init_from`` copying the tower's ``embedding.streams.1``, ``encoder.streams.1``
   and image projection ``targets.clr.projections.1``, all three in ``train.freeze`` (locked, in eval mode); the
   text tower, its projection and the logit scale train from random init.
3. ``scratch``: the same CLIP, nothing loaded or frozen.

``lit`` and ``scratch`` run the same number of steps with the same data order; both evaluate the dev pairs every
``steps // 10`` steps (``clip_retrieval``'s dev metric: mean recall@1/5/10 both ways; it reports no dev loss), then ``evaluate --task zero_shot`` on the test images. The
script prints the training losses, the dev recall and the zero-shot accuracies as a table and draws ``WORK/frozen_tower_curve.png``.
The ``lit`` route's extra cost is the tower's run. Every step goes through the CLI and skips when its output is
complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from growth_curve import cli, losses  # noqa: E402  (benchmarks/ is the script's folder, hence on sys.path)

from modaloom.atomic import atomic_file, atomic_write_json  # noqa: E402
from modaloom.demo import vision_language as vl  # noqa: E402

# the demo's QUICK sizes are for tests; SMALL fits a loaded machine in minutes (as objectives_table.py's SMALL)
SMALL = vl.Sizes(train=2000, dev=200, test=500, pairs=100, pool=40, steps=150, batch=32, lr=2e-3, width=48,
                 layers=2, patch=7, vocab=300)
SIZES = {"quick": vl.QUICK, "small": SMALL}
IMAGE_PARTS = ["embedding.streams.1", "encoder.streams.1", "targets.clr.projections.1"]


def lit_train_section(tower: Path) -> dict[str, Any]:
    """``train.init_from`` and ``train.freeze`` of LiT's locked image tower: the parts named in ``IMAGE_PARTS``,
    each read from the same names of the tower's model folder."""
    return {"init_from": [{"prefix": p, "folder": str(tower), "source_prefix": p} for p in IMAGE_PARTS],
            "freeze": list(IMAGE_PARTS)}


def write_config(path: Path, sizes: vl.Sizes, train: dict[str, Any] | None = None) -> Path:
    """The demo's CLIP config, with a ``train`` section when given."""
    config = vl.clip_config(sizes)
    if train:
        config["train"] = train
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def finetune(work: Path, name: str, config: Path, sizes: vl.Sizes, steps: int, threads: int) -> Path:
    """``finetune --task clip_retrieval`` into ``WORK/runs/NAME`` (skipped when done); returns its model folder."""
    run = work / "runs" / name
    if not ((run / "summary.json").is_file() and vl.complete_model(run / "model")):
        data = work / "data"
        cli("finetune", "--task", "clip_retrieval", "--config", str(config), "--vocab", str(work / "vocab.txt"),
            "--train", str(data / "train_pairs.tsv"), "--dev", str(data / "dev_pairs.tsv"), "--out", str(run),
            "--steps", str(steps), "--batch-size", str(sizes.batch), "--lr", str(sizes.lr),
            f"train.eval_every={max(steps // 10, 1)}", f"train.log_every={max(steps // 30, 1)}", "train.seed=7", "train.adam_bias_correction=true",
            "train.warmup_ratio=0.1", "train.group_by_length=false", "train.progress=false",
            "train.tensorboard=false", f"train.threads={threads}")
    return run / "model"


def dev_recall(run: Path) -> dict[int, float]:
    """The dev mean recall (R@1/5/10 both ways) by step, from a run's ``metrics.jsonl``: ``clip_retrieval``
    evaluates its dev pairs by recall, not by loss."""
    curve = {}
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "eval/mean_recall" in record:
            curve[int(record["step"])] = float(record["eval/mean_recall"])
    return curve


def zero_shot(work: Path, model: Path) -> float:
    """``evaluate --task zero_shot`` accuracy of a model folder on the test images (the demo's prompt)."""
    out = model.parent / "zero_shot.json"
    if not out.is_file():
        cli("evaluate", "--task", "zero_shot", "--model", str(model), "--input", str(work / "data" / "test.tsv"),
            "--out", str(out), f"task.classes={','.join(vl.CLASSES)}", f"task.template={vl.PROMPT}")
    return float(json.loads(out.read_text(encoding="utf-8"))["accuracy"])


def draw(train: dict[str, dict[int, float]], dev: dict[str, dict[int, float]], out: Path, title: str) -> Path:
    """Two panels: the training contrastive loss and the dev mean recall, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, curves, label in ((ax_loss, train, "training contrastive loss"), (ax_dev, dev, "dev mean recall")):
        for name, curve in curves.items():
            steps = sorted(curve)
            ax.plot(steps, [curve[s] for s in steps], "-" if ax is ax_loss else "o-", label=name, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def table(train: dict[str, dict[int, float]], dev: dict[str, dict[int, float]], accuracy: dict[str, float],
          walls: dict[str, float]) -> str:
    """Markdown: at every evaluated step, each run's training loss (at the nearest logged step at or before it)
    and dev mean recall; then each run's final zero-shot accuracy and training wall time."""
    names = list(dev)
    head = " | ".join(f"{n} train loss | {n} dev mean recall" for n in names)
    lines = [f"| step | {head} |", "|---" * (2 * len(names) + 1) + "|"]

    def at(curve: dict[int, float], step: int) -> str:
        logged = [s for s in curve if s <= step]
        return f"{curve[max(logged)]:.3f}" if logged else ""

    for step in sorted(set.intersection(*(set(c) for c in dev.values()))):
        cells = " | ".join(f"{at(train[n], step)} | {dev[n][step]:.3f}" for n in names)
        lines.append(f"| {step} | {cells} |")
    lines += ["", "| run | zero-shot acc | train wall s |", "|---|---|---|"]
    lines += [f"| {n} | {accuracy[n]:.3f} | {walls[n]:.0f} |" for n in accuracy]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, configs and runs")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=None, help="steps of the lit and scratch runs (default: the size's)")
    parser.add_argument("--tower-steps", type=int, default=None, help="steps of the tower's run (default: steps)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = SIZES[args.size]
    if args.steps:
        sizes = replace(sizes, steps=args.steps)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    manifest = vl.write_data(work / "data", sizes)
    if not (work / "vocab.txt").is_file():
        cli("build-vocab", "--type", "wordpiece", "--corpus", str(work / "data" / "captions.txt"), "--vocab-size",
            str(sizes.vocab), "--out", str(work / "vocab.txt"), "--lowercase")
    tower_steps = args.tower_steps or sizes.steps
    tower = finetune(work, "tower", write_config(work / "tower.yaml", sizes), sizes, tower_steps, args.threads)
    lit_config = write_config(work / "lit.yaml", sizes, lit_train_section(tower))
    runs = {"lit": finetune(work, "lit", lit_config, sizes, sizes.steps, args.threads),
            "scratch": finetune(work, "scratch", write_config(work / "scratch.yaml", sizes), sizes, sizes.steps,
                                args.threads)}
    train = {name: losses(model.parent)[0] for name, model in runs.items()}
    dev = {name: dev_recall(model.parent) for name, model in runs.items()}
    accuracy = {name: zero_shot(work, model) for name, model in [("tower", tower), *runs.items()]}
    walls = {name: json.loads((model.parent / "summary.json").read_text(encoding="utf-8"))["wall_seconds"]
             for name, model in [("tower", tower), *runs.items()]}
    text = table(train, dev, accuracy, walls)
    figure = draw(train, dev, work / "frozen_tower_curve.png",
                  f"LiT (image tower from a {tower_steps}-step CLIP, locked) vs scratch, {sizes.steps} steps")
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []
    print(text)
    print(f"tower: {tower_steps} steps, zero-shot {accuracy['tower']:.3f}, train wall {walls['tower']:.0f} s; "
          f"chance {1 / len(vl.CLASSES):.3f}; load average {load}; figure {figure}")
    atomic_write_json(work / "frozen_tower_curve.json",
                      {"size": args.size, "tower_steps": tower_steps, "train_loss": train, "dev_mean_recall": dev, "zero_shot": accuracy,
                       "train_wall_s": walls, "load_average": load, "counts": manifest["counts"],
                       "threads": args.threads, "markdown": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
