"""The demo's vision stage: MAE pre-training of a small ViT on unlabelled Fashion-MNIST, then classification.

Steps (each a ``modaloom`` command, skipped when its output is complete):
1. export Fashion-MNIST (Debian ``dataset-fashion-mnist``) as PNG images + ``label path`` lists;
2. ``preprocess --processor mae`` the unlabelled training images (random 75 % patch masks drawn at load time);
3. ``pretrain`` a small ViT with the ``mae`` target (encoder on the visible patches, light decoder);
4. ``finetune --task image_classification`` from the pre-trained encoder on a few labelled images, and the same
   model and recipe from random initialisation; both pick their best step on dev and are scored on test;
5. ``predict`` a few test images with the pre-trained classifier, and draw masked inputs and reconstructions.

The regime is the classic semi-supervised one: many unlabelled images, few labels (``Sizes.labelled``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from modaloom.atomic import atomic_write_json
from modaloom.data import fashion_mnist
from modaloom.demo.install import ensure_debian_package
from modaloom.demo.stage import Figure, StageContext, StageReport, Table, run_summary, timed
from modaloom.errors import DataError

NORM = "half"  # pixel normalisation (mean = std = 0.5) of pre-training data, fine-tuning and the picture alike
SHOWN = 8  # test images in the reconstruction picture and in the shown predictions


@dataclass(frozen=True)
class Sizes:
    """How big the stage runs: data counts, model width and depth, steps."""

    unlabelled: int  # training images for MAE pre-training (labels unused)
    labelled: int  # labelled training images for fine-tuning (the first ones of the unlabelled pool)
    dev: int  # from the end of the official training set, never pre-trained on
    test: int  # the first images of the official test set
    width: int
    layers: int
    heads: int
    patch: int
    pretrain_steps: int
    pretrain_batch: int
    finetune_steps: int
    finetune_batch: int
    eval_every: int


FULL = Sizes(unlabelled=20000, labelled=1000, dev=1000, test=2000, width=64, layers=4, heads=4, patch=4,
             pretrain_steps=400, pretrain_batch=128, finetune_steps=240, finetune_batch=64, eval_every=80)
QUICK = Sizes(unlabelled=200, labelled=100, dev=40, test=60, width=32, layers=2, heads=2, patch=7,
              pretrain_steps=20, pretrain_batch=32, finetune_steps=20, finetune_batch=32, eval_every=20)


def source_folder() -> Path:
    """The folder of Fashion-MNIST's idx.gz files (tests replace this by a tiny synthetic dataset)."""
    ensure_debian_package(fashion_mnist.DEBIAN_PACKAGE, fashion_mnist.SOURCE / fashion_mnist.FILES["train"][0])
    return fashion_mnist.SOURCE


def export_data(out: Path, sizes: Sizes) -> Path:
    """PNG images + ``train.tsv`` (unlabelled pool), ``labelled.tsv``, ``dev.tsv``, ``test.tsv``; skipped when
    ``ready.json`` records the same sizes."""
    ready = out / "ready.json"
    wanted = {"unlabelled": sizes.unlabelled, "labelled": sizes.labelled, "dev": sizes.dev, "test": sizes.test}
    if ready.is_file() and json.loads(ready.read_text(encoding="utf-8")).get("wanted") == wanted:
        return out
    source = source_folder()
    train_x, train_y = fashion_mnist.load_split(source, "train")
    test_x, test_y = fashion_mnist.load_split(source, "test")
    dev = min(sizes.dev, len(train_x) // 5)
    pool = min(sizes.unlabelled, len(train_x) - dev)
    if pool < 2 or dev < 1:
        raise DataError(f"{source}: {len(train_x)} training images are too few for the vision demo")
    counts = {
        "unlabelled": fashion_mnist.export_split(train_x[:pool], train_y[:pool], out, "train"),
        "dev": fashion_mnist.export_split(train_x[-dev:], train_y[-dev:], out, "dev"),
        "test": fashion_mnist.export_split(test_x[:sizes.test], test_y[:sizes.test], out, "test"),
    }
    lines = (out / "train.tsv").read_text(encoding="utf-8").splitlines()
    counts["labelled"] = min(sizes.labelled, pool)
    (out / "labelled.tsv").write_text("\n".join(lines[:counts["labelled"] + 1]) + "\n", encoding="utf-8")
    test_lines = (out / "test.tsv").read_text(encoding="utf-8").splitlines()
    (out / "shown.tsv").write_text("\n".join(test_lines[:SHOWN + 1]) + "\n", encoding="utf-8")
    atomic_write_json(ready, {"wanted": wanted, "counts": counts})
    return out


def encoder_config(sizes: Sizes, parts: list[str]) -> dict[str, Any]:
    """The small ViT shared by both fine-tuned models (28x28 images, grey replicated to RGB by the reader)."""
    patches = (28 // sizes.patch) ** 2
    embedding = {"parts": parts, "emb_size": sizes.width, "max_seq_length": patches + 1, "image_height": 28,
                 "image_width": 28, "channels": 3, "patch_size": sizes.patch, "cls_token": True, "norm": "none",
                 "dropout": 0.0}
    encoder = {"type": "transformer", "hidden_size": sizes.width, "layers_num": sizes.layers,
               "heads_num": sizes.heads, "feedforward_size": 4 * sizes.width, "act": "gelu", "norm": "layernorm",
               "norm_eps": 1e-6, "norm_position": "pre", "final_norm": True, "mask": "fully_visible",
               "dropout": 0.0}
    return {"embedding": embedding, "encoder": encoder}


def write_configs(work: Path, sizes: Sizes) -> dict[str, str]:
    """``mae.yaml`` (zoo ``mae/base`` shrunk: pixel targets, one decoder layer) and ``vit.yaml`` (the same
    encoder with a ``cls`` head) for the random-init baseline; returns name -> relative path."""
    mae = encoder_config(sizes, ["patch", "pos", "drop_masked"])
    mae["targets"] = [{"type": "mae", "patch_size": sizes.patch, "channels": 3, "norm_pix_loss": False,
                       "decoder_layers_num": 1, "decoder_hidden_size": sizes.width, "decoder_heads_num": sizes.heads,
                       "decoder_feedforward_size": 2 * sizes.width}]
    vit = encoder_config(sizes, ["patch", "pos"])
    vit["targets"] = [{"type": "cls", "labels_num": 10, "pooling": "first", "pooler": False}]
    header = "# written by `modaloom demo vision`; sizes: " + json.dumps(asdict(sizes)) + "\n"
    for name, model, processor in (("mae.yaml", mae, "mae"), ("vit.yaml", vit, "vit")):
        text = header + yaml.safe_dump({"model": model, "data": {"processor": processor}}, sort_keys=False)
        (work / name).write_text(text, encoding="utf-8")
    return {"mae": "mae.yaml", "vit": "vit.yaml"}


STEP_OUTPUTS = ("mae_data", "pretrain", "finetune_pretrained", "finetune_random", "shown_predictions.jsonl",
                "reconstructions.png")


def forget_other_sizes(work: Path, sizes: Sizes) -> None:
    """Removes the step outputs of a run with other sizes (quick after full, or the reverse) from ``work``, so that
    no step reuses them; then records these sizes in ``sizes.json``."""
    record = work / "sizes.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != asdict(sizes):
        for name in STEP_OUTPUTS:
            path = work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    atomic_write_json(record, asdict(sizes))


def finished(run_dir: Path, key: str = "steps") -> bool:
    """A run whose summary.json says it completed (and, for fine-tuning, holds ``key``)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text(encoding="utf-8"))
    return not summary.get("interrupted") and key in summary and (run_dir / "model" / "model.safetensors").is_file()


def finetune_argv(data: Path, out: Path, sizes: Sizes, start: list[str]) -> list[str]:
    """One recipe for both fine-tuning runs: only ``start`` (``--model`` or ``--config``) differs."""
    argv = ["finetune", "--task", "image_classification", *start, "--train", str(data / "labelled.tsv"),
            "--dev", str(data / "dev.tsv"), "--test", str(data / "test.tsv"), "--out", str(out),
            "--steps", str(sizes.finetune_steps), "--batch-size", str(sizes.finetune_batch), "--lr", "1e-3",
            "train.warmup_ratio=0.1", "train.weight_decay=0.05", f"train.eval_every={sizes.eval_every}",
            f"task.norm={NORM}", "task.hflip=true"]
    return [*argv, "--resume"] if out.exists() else argv


def reconstruction_picture(model_dir: Path, images: list[Path], sizes: Sizes, out: Path) -> None:
    """Originals, masked inputs and MAE reconstructions of ``images`` as one PNG.

    No CLI verb returns a pre-trained MAE model's pixel predictions (``predict`` needs a fine-tuned task), so
    this loads the saved folder with ``modaloom.model.load``; pixels go through the data pipeline's own
    transform and masking (``ImageTransform`` with ``NORM``, ``random_patch_mask``), inverted for display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from modaloom.data.images import IMAGE_NORMS, ImageTransform, random_patch_mask
    from modaloom.model import load
    from modaloom.targets.mae import patchify

    rng = np.random.default_rng(0)
    transform = ImageTransform(28, 28, "resize", NORM)
    pixels = torch.from_numpy(np.stack([transform(p.read_bytes(), rng, str(p)) for p in images]))
    patches = (28 // sizes.patch) ** 2
    mask = torch.from_numpy(np.stack([random_patch_mask(patches, 0.75, rng) for _ in images]))
    model = load(model_dir).eval()
    with torch.no_grad():
        predicted = model({"pixel_values": pixels, "patch_mask": mask}).logits["mae"].float()
    original = patchify(pixels, sizes.patch)
    masked_input = torch.where(mask.unsqueeze(-1), torch.full_like(original, float("nan")), original)
    rebuilt = torch.where(mask.unsqueeze(-1), predicted, original)
    mean, std = (float(v[0]) for v in IMAGE_NORMS[NORM])
    rows = [("original", original), ("masked 75 %", masked_input), ("reconstruction", rebuilt)]
    fig, axes = plt.subplots(3, len(images), figsize=(1.2 * len(images), 3.9), squeeze=False)
    for r, (title, grid) in enumerate(rows):
        shown = unpatchify(grid, sizes.patch, 28).mean(1).numpy() * std + mean  # grey: channels are equal
        for c in range(len(images)):
            ax = axes[r][c]
            ax.imshow(np.ma.masked_invalid(shown[c]), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_facecolor("#c44")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def unpatchify(patches: Any, patch: int, size: int) -> Any:
    """(B, N, p*p*C) patch rows -> (B, C, size, size): the inverse of ``modaloom.targets.mae.patchify``."""
    b, n, d = patches.shape
    grid, channels = size // patch, d // (patch * patch)
    x = patches.reshape(b, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, size, size)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@timed
def run(ctx: StageContext) -> StageReport:
    """MAE pre-training, then fine-tuning with and without it; test accuracies, curves and a picture."""
    sizes = QUICK if ctx.quick else FULL
    work = ctx.work
    work.mkdir(parents=True, exist_ok=True)
    forget_other_sizes(work, sizes)
    data = export_data(work / "data", sizes)
    counts = json.loads((data / "ready.json").read_text(encoding="utf-8"))["counts"]
    configs = write_configs(work, sizes)
    patches = (28 // sizes.patch) ** 2

    mae_data = work / "mae_data"
    if not (mae_data / "manifest.json").is_file():
        options = ["image_height=28", "image_width=28", f"patch_size={sizes.patch}", "crop=resize",
                   f"norm={NORM}", "hflip=true", "mask_ratio=0.75"]
        ctx.command("preprocess the unlabelled images for masked-image modelling",
                    ["preprocess", "--processor", "mae", "--corpus", str(data / "train.tsv"), "--out", str(mae_data),
                     "--overwrite", *[arg for option in options for arg in ("--option", option)]])
    pretrain = work / "pretrain"
    if not finished(pretrain):
        ctx.command("pre-train a small ViT with the mae target on the unlabelled images",
                    ["pretrain", "--config", str(work / configs["mae"]), "--data", str(mae_data), "--out", str(pretrain),
                     "--steps", str(sizes.pretrain_steps), "--batch-size", str(sizes.pretrain_batch), "--lr", "1.5e-3",
                     "--seq-length", str(patches + 1), "--resume", "train.warmup_ratio=0.05",
                     "train.weight_decay=0.05", "train.betas=[0.9,0.95]", "train.schedule=cosine"])
    runs = {"pretrained": work / "finetune_pretrained", "random_init": work / "finetune_random"}
    starts = {"pretrained": ["--model", str(pretrain / "model")],
              "random_init": ["--config", str(work / configs["vit"])]}
    for name, out in runs.items():
        if not finished(out, "test/accuracy"):
            what = "from the pre-trained encoder" if name == "pretrained" else "from random initialisation"
            ctx.command(f"fine-tune image classification {what} on {counts['labelled']} labelled images",
                        finetune_argv(data, out, sizes, starts[name]))
    predictions = work / "shown_predictions.jsonl"
    if not predictions.is_file():
        ctx.command("predict a few test images with the pre-trained classifier",
                    ["predict", "--model", str(runs["pretrained"] / "model"), "--input", str(data / "shown.tsv"),
                     "--out", str(predictions)])
    picture = work / "reconstructions.png"
    if not picture.is_file():
        shown = [data / "test" / f"{i}.png" for i in range(min(SHOWN, counts["test"]))]
        reconstruction_picture(pretrain / "model", shown, sizes, picture)
    return build_report(ctx, sizes, counts, configs, pretrain, runs, predictions)


def build_report(ctx: StageContext, sizes: Sizes, counts: dict[str, int], configs: dict[str, str], pretrain: Path,
                 runs: dict[str, Path], predictions: Path) -> StageReport:
    """The stage's report from the runs' summary.json files and the shown predictions."""
    work = ctx.work
    summaries = {name: json.loads((out / "summary.json").read_text(encoding="utf-8")) for name, out in runs.items()}
    pre = json.loads((pretrain / "summary.json").read_text(encoding="utf-8"))
    accuracy = {name: float(s["test/accuracy"]) for name, s in summaries.items()}
    rows = []
    for name, s in summaries.items():
        start = f"MAE pre-trained ({sizes.pretrain_steps} steps)" if name == "pretrained" else "random init"
        rows.append([start, counts["labelled"], sizes.finetune_steps, round(float(s["best_dev"]["value"]), 4),
                     round(accuracy[name], 4), round(float(s["test/macro_f1"]), 4)])
    table = Table(f"Fashion-MNIST test accuracy ({counts['test']} test images, 10 classes, chance 0.10)",
                  ["start", "labelled images", "fine-tune steps", "best dev accuracy", "test accuracy",
                   "test macro-F1"], rows)
    pre_table = Table("MAE pre-training", ["unlabelled images", "steps", "batch", "mask ratio", "final loss"],
                      [[counts["unlabelled"], pre.get("steps"), sizes.pretrain_batch, 0.75,
                        round(float(pre.get("final_loss") or float("nan")), 4)]])
    rows_shown = (work / "data" / "shown.tsv").read_text(encoding="utf-8").splitlines()[1:]
    samples = [{"input": row.split("\t")[1], "expected": row.split("\t")[0], "got": got["label"]}
               for row, got in zip(rows_shown, read_jsonl(predictions), strict=False)]
    gain = accuracy["pretrained"] - accuracy["random_init"]
    summary = (
        f"A ViT of {sizes.layers} layers (width {sizes.width}, {sizes.patch}x{sizes.patch} patches of the 28x28 "
        f"images) is pre-trained as a masked autoencoder on {counts['unlabelled']:,} unlabelled Fashion-MNIST "
        f"training images ({sizes.pretrain_steps} steps of {sizes.pretrain_batch}, 75 % of patches masked), then "
        f"fine-tuned to classify with only {counts['labelled']:,} labelled images ({sizes.finetune_steps} steps of "
        f"{sizes.finetune_batch}, best step on {counts['dev']:,} dev images); the same model and recipe from "
        f"random initialisation is the baseline. Test accuracy on {counts['test']:,} test images: "
        f"{accuracy['pretrained']:.3f} with pre-training, {accuracy['random_init']:.3f} without "
        f"({gain * 100:+.1f} points). Few labels, many unlabelled images: the regime where pre-training pays."
    )
    figures = [Figure("reconstructions.png", "Test images: original, masked input (red: hidden patches) and the "
                      "MAE reconstruction (visible patches kept, hidden ones predicted)"),
               Figure("pretrain/curves.png", "MAE pre-training loss (mean squared error on masked patches)")]
    figures += [Figure(f"{out.name}/curves.png", f"fine-tuning ({name.replace('_', ' ')})")
                for name, out in runs.items() if (out / "curves.png").is_file()]
    return StageReport(
        stage="vision", title="Vision: MAE pre-training of a small ViT on Fashion-MNIST", summary=summary,
        headline={"accuracy_pretrained": round(accuracy["pretrained"], 4),
                  "accuracy_random_init": round(accuracy["random_init"], 4), "accuracy_gain": round(gain, 4)},
        tables=[table, pre_table], figures=figures, configs=configs, commands=list(ctx.commands),
        runs=[run_summary("mae pre-training", pretrain),
              *[run_summary(f"fine-tune ({name.replace('_', ' ')})", out) for name, out in runs.items()]],
        samples=samples,
    )

