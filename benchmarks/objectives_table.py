"""Contrastive and matching objectives side by side on the vision-language demo data: one table, one budget.

The data are the demo's captioned Fashion-MNIST (``demo/vision_language.write_data``, written once). Every row
is the demo's small model (``vision_language.clip_config``: same widths, depths, patches, text positions) with
only the objective or the encoder changed, trained from random init with the same steps, batch, lr and seed:

- ``infonce``, ``siglip``, ``filip``: the ``clr`` target's ``loss``; ``moco``: the ``moco`` target (momentum
  towers, queues of past keys); ``vlmo-dual``: the ``modality_experts`` encoder (VLMo) with ``clr`` alone, so
  only its dual view trains. These train with ``modaloom finetune --task clip_retrieval --config``.
- ``vlmo-itm-hard``: the same VLMo encoder with ``clr`` (dual view) and ``itm`` with hard negatives (fusion
  view) trained together. ``clip_retrieval`` keeps the contrastive head only, so this row goes through
  ``modaloom preprocess --processor vilt`` (matching pairs only) and ``modaloom pretrain``.
- ``vlmo-fusion``: vlmo-itm-hard's model itself (its run folder, not retrained) evaluated with
  ``task.scorer=itm task.rerank=10``: the top 10 classes or candidates by the dual view re-ranked by the ITM
  head through the fusion view, so the table shows VLMo's dual and fusion modes.

``--attributes``: captions that also name each image's tone and size, measured from its pixels
(``write_data(attributes=True)``), so a same-class hard negative differs from the positive and the matching head
has something to learn. ``--itm-steps N`` with the rows ``vlmo-itm-hard-long`` and ``vlmo-fusion-long``: the
same ITM model trained N steps, as extra rows beside the common budget. ``vlmo-itm-random`` and
``vlmo-fusion-random``: extra rows at the common budget whose ITM negatives are ViLT's random mismatches
(``vilt`` processor with ``mismatch_prob=0.5``, ``itm`` with ``negatives: data``) instead of mined ones. Every
pretrain row reports its ITM loss and accuracy at the end, the prior loss of its mix of matches and
non-matches, and the first logged step from which the loss stays below 0.9 x that prior
(``itm_left_prior_step``).

Each model is then read the same way, through its contrastive (dual) features (vlmo-fusion: re-ranked by ITM): ``evaluate --task zero_shot``
on the test images with one prompt ensemble (``task.templates``) for all rows, and ``evaluate --task
clip_retrieval`` (recall@K both ways) on the held-out test pairs. Rows whose CLI path fails keep the reason
in the table instead of numbers. Usage::

    python benchmarks/objectives_table.py --size small --work /tmp/objectives [--rows infonce,siglip] \
        [--threads 2] [--json out.json] [--attributes] [--itm-steps 2400]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from modaloom.atomic import atomic_file, atomic_write_json
from modaloom.demo import vision_language as vl
from modaloom.demo.stage import StageContext, command_json
from modaloom.errors import DataError

# between the demo's QUICK (tests) and FULL (minutes per row on a free machine): a table in minutes when loaded
SMALL = vl.Sizes(train=2000, dev=40, test=500, pairs=100, pool=40, steps=150, batch=32, lr=2e-3, width=48,
                 layers=2, patch=7, vocab=300)
SIZES = {"quick": vl.QUICK, "small": SMALL, "full": vl.FULL}
# the prompt ensemble of every row's zero-shot evaluation (each reads well with every class name)
TEMPLATES = ["a photo of a {}.", "a product shot of a {}.", "a black and white photo of a {}.",
             "a low resolution photo of a {}.", "this is a {}."]


RERANK = 10  # the vlmo-fusion row: zero-shot classes and retrieval candidates re-ranked by the itm head


@dataclass(frozen=True)
class Row:
    """One table row: a name, the objective in words, and how it trains (``finetune`` or ``pretrain``)."""

    name: str
    objective: str
    path: str  # finetune: clip_retrieval from --config; pretrain: vilt-preprocessed pairs + pretrain
    model_of: str = ""  # another row whose trained model this row evaluates (no training of its own)
    scorer: tuple[str, ...] = ()  # evaluate's scorer options (task.scorer=itm task.rerank=K); empty: contrastive
    long: bool = False  # an extra row trained --itm-steps steps instead of the common budget (not run by default)
    extra: bool = False  # an extra row at the common budget (not run by default)
    mismatch: float = 0.0  # the vilt processor's mismatch_prob (pretrain rows): random mismatches labelled 0


ROWS = [
    Row("infonce", "clr, loss infonce (CLIP)", "finetune"),
    Row("siglip", "clr, loss siglip (pairwise sigmoid)", "finetune"),
    Row("moco", "moco (momentum towers, key queues)", "finetune"),
    Row("filip", "clr, loss filip (token-wise late interaction)", "finetune"),
    Row("vlmo-dual", "modality_experts encoder, clr (dual view)", "finetune"),
    Row("vlmo-itm-hard", "modality_experts, clr (dual) + itm hard negatives (fusion)", "pretrain"),
    Row("vlmo-fusion", f"vlmo-itm-hard's model, top {RERANK} re-ranked by itm (fusion view)", "pretrain",
        model_of="vlmo-itm-hard", scorer=("task.scorer=itm", f"task.rerank={RERANK}")),
    Row("vlmo-itm-hard-long", "vlmo-itm-hard, trained --itm-steps steps (extra row)", "pretrain", long=True),
    Row("vlmo-fusion-long", f"vlmo-itm-hard-long's model, top {RERANK} re-ranked by itm (extra row)", "pretrain",
        model_of="vlmo-itm-hard-long", scorer=("task.scorer=itm", f"task.rerank={RERANK}"), long=True),
    Row("vlmo-itm-random", "modality_experts, clr (dual) + itm on random mismatches (extra row)", "pretrain",
        extra=True, mismatch=0.5),
    Row("vlmo-fusion-random", f"vlmo-itm-random's model, top {RERANK} re-ranked by itm (extra row)", "pretrain",
        model_of="vlmo-itm-random", scorer=("task.scorer=itm", f"task.rerank={RERANK}"), extra=True, mismatch=0.5),
]
LEFT_PRIOR = 0.9  # the ITM loss has left its prior once it stays below this fraction of the prior loss


def vlmo_encoder(sizes: vl.Sizes) -> dict[str, Any]:
    """VLMo's encoder at the demo towers' size: shared attention, one expert per modality, the top layer fused."""
    width = sizes.width
    return {"type": "modality_experts", "modalities": ["text", "vision"], "fusion_layers": 1,
            "hidden_size": width, "layers_num": sizes.layers, "heads_num": 4, "feedforward_size": 2 * width,
            "act": "gelu", "norm": "layernorm", "norm_position": "pre", "final_norm": True, "dropout": 0.0}


def row_config(row: Row, sizes: vl.Sizes) -> dict[str, Any]:
    """The demo's CLIP config with only this row's objective or encoder changed."""
    if row.model_of:
        return row_config(next(r for r in ROWS if r.name == row.model_of), sizes)
    config = vl.clip_config(sizes)
    model = config["model"]
    clr = model["targets"][0]
    if row.name in ("siglip", "filip"):
        clr["loss"] = row.name
    elif row.name == "moco":
        model["targets"][0] = {**clr, "type": "moco", "momentum": 0.995, "queue_size": 4 * sizes.batch}
    elif row.name.startswith("vlmo"):
        model["encoder"] = vlmo_encoder(sizes)
        if row.name.startswith("vlmo-itm"):
            model["targets"].append({"type": "itm", "negatives": "data" if row.mismatch else "hard"})
            config["data"] = {"processor": "vilt"}
    elif row.name != "infonce":
        raise ValueError(f"unknown row {row.name!r}; rows: {[r.name for r in ROWS]}")
    return config


def train_options(sizes: vl.Sizes, threads: int | None) -> list[str]:
    """The training overrides every row shares (beyond steps, batch, lr): finetune and pretrain differ in their
    defaults of warm-up (10% / none) and batching (length-grouped / shuffled), so both are set here."""
    out = ["train.seed=7", "train.adam_bias_correction=true", "train.warmup_ratio=0.1", "train.group_by_length=false",
           "train.progress=false", "train.tensorboard=false"]
    if threads:
        out.append(f"train.threads={threads}")
    return out


def step(ctx: StageContext, done: bool, title: str, argv: list[str]) -> None:
    """Runs ``modaloom ARGV`` unless its output is already complete; either way the table lists the command."""
    if done:
        ctx.commands.append("modaloom " + " ".join(argv))
    else:
        ctx.command(title, argv)


def to_json(ctx: StageContext, title: str, argv: list[str], out: Path) -> dict[str, Any]:
    """``demo.stage.command_json``, listing the command also when its output was already there."""
    if out.is_file():
        ctx.commands.append("modaloom " + " ".join(argv) + f" > {out.name}")
    return command_json(ctx, title, argv, out)


def train(ctx: StageContext, row: Row, sizes: vl.Sizes, data: Path, vocab: Path, config: Path,
          run_dir: Path) -> None:
    """Trains the row's model into ``run_dir/model`` with the CLI (skipped when that folder is complete)."""
    done = vl.complete_model(run_dir / "model") and (run_dir / "summary.json").is_file()
    budget = ["--steps", str(sizes.steps), "--batch-size", str(sizes.batch), "--lr", str(sizes.lr)]
    common = train_options(sizes, ctx.threads)
    if row.path == "finetune":
        step(ctx, done, f"{row.name}: train from random init",
                    ["finetune", "--task", "clip_retrieval", "--config", str(config), "--vocab", str(vocab),
                     "--train", str(data / "train_pairs.tsv"), "--dev", str(data / "dev_pairs.tsv"), "--out",
                     str(run_dir), *budget, f"train.eval_every={sizes.steps}", *common])
        return
    processed = ctx.work / (f"vilt_data_mismatch{row.mismatch}" if row.mismatch else "vilt_data")
    what = f"{row.mismatch:.0%} random mismatches" if row.mismatch else "matching image-text pairs"
    step(ctx, (processed / "manifest.json").is_file(), f"{what} for pretrain (vilt processor)",
                    ["preprocess", "--processor", "vilt", "--corpus", str(data / "train_pairs.tsv"), "--vocab",
                     str(vocab), "--out", str(processed), "--seq-length", "24", "--option", "image_height=28",
                     "--option", "image_width=28", "--option", f"mismatch_prob={row.mismatch:g}", "--option",
                     "norm=clip"])
    step(ctx, done, f"{row.name}: pretrain from random init",
                ["pretrain", "--config", str(config), "--data", str(processed), "--out", str(run_dir), *budget,
                 *common])


def itm_progress(metrics: Path, mismatch: float = 0.0) -> dict[str, Any]:
    """The ITM head's loss and accuracy at the last logged step of a run's ``metrics.jsonl``, the prior loss of
    its label mix (a head that always answers the share of matches: the batch's rows, of which ``mismatch`` are
    random mismatches, beside the mined negatives), and the first logged step from which the loss stays below
    ``LEFT_PRIOR`` x that prior (None: it never left)."""
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if "itm_loss" in r and r.get("itm_count")]
    if not rows:
        raise KeyError(f"{metrics}: no logged step has itm_loss")
    left = None
    for r in rows:
        positives = (r["itm_count"] - r.get("itm_hard_negatives", 0)) * (1 - mismatch) / r["itm_count"]
        prior = -sum(p * math.log(p) for p in (positives, 1 - positives) if p > 0)
        r["itm_prior_loss"] = prior
        if r["itm_loss"] < LEFT_PRIOR * prior:
            left = r["step"] if left is None else left
        else:
            left = None
    last = rows[-1]
    return {"itm_loss": round(last["itm_loss"], 4), "itm_accuracy": round(last["itm_accuracy"], 4),
            "itm_prior_loss": round(last["itm_prior_loss"], 4), "itm_left_prior_step": left,
            "itm_step": last["step"]}


def evaluate(ctx: StageContext, row: Row, data: Path, templates: Path, run_dir: Path) -> dict:
    """Zero-shot accuracy (the prompt ensemble) and recall@K on the held-out pairs of the row's model."""
    model = run_dir / "model"
    classes = ctx.work / "classes.txt"  # a file: some class names hold spaces, the commands are shown unquoted
    suffix = f"_{row.name}" if row.model_of else ""  # beside the other row's own results
    zero = to_json(ctx, f"{row.name}: zero-shot", [
        "evaluate", "--task", "zero_shot", "--model", str(model), "--input", str(data / "test.tsv"),
        f"task.classes={classes}", f"task.templates={templates}", *row.scorer], run_dir / f"zero_shot{suffix}.json")
    recall = to_json(ctx, f"{row.name}: recall@K", [
        "evaluate", "--task", "clip_retrieval", "--model", str(model), "--input", str(data / "test_pairs.tsv"),
        *row.scorer], run_dir / f"retrieval{suffix}.json")
    return {"zero_shot_accuracy": zero["accuracy"], "t2i_r@1": recall["t2i_r@1"], "i2t_r@1": recall["i2t_r@1"],
            "t2i_r@5": recall["t2i_r@5"], "i2t_r@5": recall["i2t_r@5"]}


def run_row(ctx: StageContext, row: Row, sizes: vl.Sizes, data: Path, vocab: Path, templates: Path) -> dict:
    """Config, training and evaluation of one row; a failing command leaves its reason instead of numbers."""
    run_dir = ctx.work / "runs" / (row.model_of or row.name)  # vlmo-fusion: vlmo-itm-hard's run, not retrained
    config = ctx.work / "configs" / f"{row.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(config) as tmp:
        tmp.write_text(yaml.safe_dump(row_config(row, sizes), sort_keys=False), encoding="utf-8")
    first = len(ctx.commands)
    out: dict[str, Any] = {"row": row.name, "objective": row.objective, "path": row.path, "config": str(config),
                           "long": row.long}
    start = time.perf_counter()
    try:
        train(ctx, row, sizes, data, vocab, config, run_dir)
        out["train_wall_s"] = round(time.perf_counter() - start, 1)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        out["steps"] = summary.get("steps")
        out["train_run_s"] = summary.get("wall_seconds")
        if row.name.startswith("vlmo-itm"):
            out.update(itm_progress(run_dir / "metrics.jsonl", row.mismatch))
        out.update(evaluate(ctx, row, data, templates, run_dir))
    except (DataError, OSError, KeyError, ValueError) as exc:
        out["failed"] = str(exc)
    out["commands"] = ctx.commands[first:]
    return out


def fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: list[dict], sizes: vl.Sizes, chance: dict[str, float]) -> str:
    """One Markdown table: the metrics per row (or why it failed), then the commands of each row."""
    lines = ["| row | objective | CLI path | zero-shot acc | R@1 t2i | R@1 i2t | train wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "failed" in r:
            reason = r["failed"].split(": modaloom ")[0]  # the command itself is listed below the table
            lines.append(f"| {r['row']} | {r['objective']} | {r['path']} | {reason} | | | |")
            continue
        lines.append(f"| {r['row']} | {r['objective']} | {r['path']} | {fmt(r['zero_shot_accuracy'])} | "
                     f"{fmt(r['t2i_r@1'])} | {fmt(r['i2t_r@1'])} | {fmt(r.get('train_run_s'))} |")
    lines.append(f"| chance | | | {fmt(chance['zero_shot'])} | {fmt(chance['r@1'])} | {fmt(chance['r@1'])} | |")
    ceiling = fmt(chance["r@1_class_ceiling"])  # the best R@1 of a model that knows the class and nothing more
    lines.append(f"| best possible knowing only the class | | | 1.000 | {ceiling} | {ceiling} | |")
    if "r@1_attribute_ceiling" in chance:  # captions name class and attributes: the best R@1 knowing both
        both = fmt(chance["r@1_attribute_ceiling"])
        lines.append(f"| best possible knowing the class and attributes | | | 1.000 | {both} | {both} | |")
    long = sorted({r["steps"] for r in results if r.get("long") and r.get("steps")})
    lines += ["", f"Budget of every row: {sizes.steps} steps, batch {sizes.batch}, lr {sizes.lr}, width "
              f"{sizes.width}, {sizes.layers} layers, patch {sizes.patch}, seed 7; {sizes.train} training pairs, "
              f"{sizes.test} zero-shot test images, {sizes.pairs} held-out test pairs"
              + (f"; the extra `-long` rows: {', '.join(map(str, long))} steps." if long else ".")]
    itm = [r for r in results if "itm_loss" in r]
    if itm:
        lines += ["", "| row | steps | ITM loss at the end | ITM accuracy | prior loss | left the prior at step |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['itm_step']} | {fmt(r['itm_loss'])} | {fmt(r['itm_accuracy'])} | "
                  f"{fmt(r['itm_prior_loss'])} | {r['itm_left_prior_step'] or 'never'} |" for r in itm]
    lines += ["", "Commands per row:", ""]
    for r in results:
        lines.append(f"- `{r['row']}`:")
        lines += [f"  - `{c}`" for c in r["commands"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, configs, runs")
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS if not (r.long or r.extra)),
                        help="comma-separated row names (the extra rows only when named)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per command")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default WORK/table.json)")
    parser.add_argument("--attributes", action="store_true",
                        help="captions also name each image's tone and size (write_data(attributes=True))")
    parser.add_argument("--itm-steps", type=int, default=None,
                        help="steps of the extra -long rows (default 4 x the size's steps)")
    args = parser.parse_args(argv)
    by_name = {r.name: r for r in ROWS}
    wanted = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(by_name)}")
    sizes = SIZES[args.size]
    if args.itm_steps is not None and args.itm_steps < 1:
        parser.error(f"--itm-steps must be at least 1, got {args.itm_steps}")
    long_sizes = replace(sizes, steps=args.itm_steps or 4 * sizes.steps)
    ctx = StageContext(work=args.work, quick=args.size == "quick", threads=args.threads, log=sys.stderr)
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    manifest = vl.write_data(data, sizes, attributes=args.attributes)
    vocab = args.work / "vocab.txt"
    step(ctx, vocab.is_file(), "WordPiece vocabulary of the training captions",
                    ["build-vocab", "--type", "wordpiece", "--corpus", str(data / "captions.txt"), "--vocab-size",
                     str(sizes.vocab), "--out", str(vocab), "--lowercase"])
    with atomic_file(args.work / "classes.txt") as tmp:
        tmp.write_text("\n".join(vl.CLASSES) + "\n", encoding="utf-8")
    templates = args.work / "templates.txt"
    with atomic_file(templates) as tmp:
        tmp.write_text("\n".join(TEMPLATES) + "\n", encoding="utf-8")
    setup = list(ctx.commands)
    results = [run_row(ctx, by_name[n], long_sizes if by_name[n].long else sizes, data, vocab, templates)
               for n in wanted]
    chance = {"zero_shot": 1 / len(vl.CLASSES), "r@1": 1 / manifest["pairs"],
              "r@1_class_ceiling": vl.class_ceiling(manifest["labels"]["test"][:manifest["pairs"]], 1)}
    if args.attributes:
        chance["r@1_attribute_ceiling"] = vl.class_ceiling(vl.caption_keys(manifest, "test", manifest["pairs"]), 1)
    table = markdown(results, sizes, chance)
    print(table)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    atomic_write_json(args.json or args.work / "table.json",
                      {"size": args.size, "sizes": asdict(replace(sizes)), "attributes": args.attributes,
                       "templates": TEMPLATES, "chance": chance,
                       "load_average": [round(x, 2) for x in load], "setup_commands": setup, "rows": results,
                       "markdown": table})
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
