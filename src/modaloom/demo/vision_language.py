"""The demo's vision-language stage: a small CLIP trained from scratch on Fashion-MNIST images with captions.

Fashion-MNIST (Debian ``dataset-fashion-mnist``) has class labels, not captions; every image gets a caption
drawn (with a fixed seed) from several templates and several names per class ("someone's running shoe",
"a pair of trainers on white"), so the text tower learns synonyms, not ten fixed strings. The steps are the
commands a user would type: ``build-vocab`` on the training captions, ``finetune --task clip_retrieval
--config clip.yaml`` (a randomly initialised small ViT + small text transformer with a ``clr`` head),
``evaluate --task zero_shot`` on the held-out test images with one prompt per class, ``evaluate`` (recall@K
both ways) on held-out test pairs, and ``predict`` on a few captions paired with every image of a test pool,
whose ``image_rank`` gives the top retrievals drawn as a grid. Each step skips when its output is complete.

"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modaloom.atomic import atomic_file, atomic_write_json
from modaloom.data import fashion_mnist
from modaloom.demo import garment_attributes
from modaloom.demo.install import ensure_debian_package
from modaloom.demo.stage import Figure, StageContext, StageReport, Table, command_json, run_summary, timed
from modaloom.errors import DataError

SOURCE = fashion_mnist.SOURCE  # the tests point this elsewhere
SEED = 11

# Zero-shot class names, in label order: each reads well in the prompt "a photo of a {}."
CLASSES = ["t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
# What a caption may call each class (article included); the zero-shot name is one of them.
NAMES: dict[str, list[str]] = {
    "t-shirt": ["a t-shirt", "a tee", "a short-sleeved top", "someone's t-shirt"],
    "pair of trousers": ["a pair of trousers", "some pants", "a pair of jeans", "someone's slacks"],
    "pullover": ["a pullover", "a sweater", "a jumper", "someone's knitted sweater"],
    "dress": ["a dress", "a summer dress", "a long dress", "someone's gown"],
    "coat": ["a coat", "a jacket", "a winter coat", "someone's overcoat"],
    "sandal": ["a sandal", "an open shoe", "a summer sandal", "someone's flip-flop"],
    "shirt": ["a shirt", "a button-up shirt", "a blouse", "someone's long-sleeved shirt"],
    "sneaker": ["a sneaker", "a running shoe", "a pair of trainers", "someone's sports shoe"],
    "bag": ["a bag", "a handbag", "a purse", "someone's tote bag"],
    "boot": ["a boot", "an ankle boot", "a leather boot", "someone's winter boot"],
}
TEMPLATES = ["a photo of {}", "{}", "{} on white", "a small picture of {}", "a black and white photo of {}",
             "a product shot of {}", "this is {}", "here is {}, seen from the front", "a grey image of {}",
             "a low resolution photo of {}"]
PROMPT = "a photo of a {}."
# The captions whose top retrievals the grid shows (text -> image), with the class each one means.
GRID_CAPTIONS = [("someone's running shoe", "sneaker"), ("a pair of jeans on white", "pair of trousers"),
                 ("a photo of a handbag", "bag"), ("a long dress", "dress")]
TOP_K = 5


@dataclass(frozen=True)
class Sizes:
    """How much data, which model and how many steps: ``FULL`` for the demo, ``QUICK`` for tests."""

    train: int
    dev: int
    test: int  # zero-shot images (the official test set's first N)
    pairs: int  # held-out test pairs ranked for recall@K (the first of the zero-shot images)
    pool: int  # test images every grid caption is ranked against
    steps: int
    batch: int
    lr: float
    width: int
    layers: int
    patch: int
    vocab: int


FULL = Sizes(train=12000, dev=500, test=2000, pairs=100, pool=1000, steps=600, batch=128, lr=2e-3, width=64,
             layers=2, patch=7, vocab=400)
QUICK = Sizes(train=240, dev=40, test=60, pairs=40, pool=40, steps=12, batch=32, lr=3e-3, width=32, layers=1,
              patch=14, vocab=200)


def fashion_mnist_splits(sizes: Sizes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(uint8 images (N, 28, 28), class indices (N,)) per split: train and dev from the official training set
    (dev from its end), test from the official test set. The tests replace this by synthetic images."""
    ensure_debian_package(fashion_mnist.DEBIAN_PACKAGE, SOURCE / fashion_mnist.FILES["train"][0])
    arrays = {name: fashion_mnist.load_split(SOURCE, name) for name in ("train", "test")}
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    if sizes.train + sizes.dev > len(train_x) or sizes.test > len(test_x):
        raise DataError(f"Fashion-MNIST has {len(train_x)} training and {len(test_x)} test images; the stage asks "
                        f"for {sizes.train}+{sizes.dev} and {sizes.test}")
    return {"train": (train_x[:sizes.train], train_y[:sizes.train]),
            "dev": (train_x[-sizes.dev:], train_y[-sizes.dev:]),
            "test": (test_x[:sizes.test], test_y[:sizes.test])}


def caption(label: int, rng: np.random.Generator, adjectives: Sequence[str] = ()) -> str:
    """A varied caption of class ``label``: a random template around a random name of the class, with the
    image's ``adjectives`` before the name ("a photo of a dark, wide sneaker"); the draws do not depend on them."""
    names = NAMES[CLASSES[label]]
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(garment_attributes.describe(names[rng.integers(len(names))], adjectives))


def write_tsv(path: Path, header: str, rows: list[tuple[str, str]]) -> None:
    """A header TSV, written atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join([header, *(f"{a}\t{b}" for a, b in rows)]) + "\n", encoding="utf-8")


def write_data(folder: Path, sizes: Sizes, attributes: bool = False) -> dict[str, Any]:
    """PNG images and the list files of every step; ``manifest.json`` (written last) marks the folder complete.

    ``{split}_pairs.tsv`` (``text path``, one seeded caption per image), ``test.tsv`` (``label path``, for
    zero-shot), ``grid_pairs.tsv`` (each grid caption beside every pool image), ``captions.txt`` (the training
    captions: the vocabulary's corpus). ``attributes``: each caption also names the image's tone and size,
    measured from its pixels (``garment_attributes``; the manifest keeps each image's words and the thresholds),
    with the same templates and names as without."""
    from PIL import Image

    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if bool(manifest.get("attributes")) != attributes:
            raise DataError(f"{folder} holds captions {'with' if manifest.get('attributes') else 'without'} "
                            f"attributes, asked for attributes={attributes}; use another folder")
        return manifest
    splits = fashion_mnist_splits(sizes)
    rng = np.random.default_rng(SEED)
    labels: dict[str, list[int]] = {}
    described: dict[str, list[tuple[str, ...]]] = {}
    cuts = garment_attributes.thresholds(garment_attributes.measure(splits["train"][0]), splits["train"][1]) \
        if attributes else {}
    for name, (images, classes) in splits.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(images):
            Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(folder / name / f"{i}.png")
        labels[name] = [int(c) for c in classes]
        described[name] = garment_attributes.words(garment_attributes.measure(images), labels[name], cuts) \
            if attributes else [() for _ in labels[name]]
        captions = [caption(c, rng, words) for c, words in zip(labels[name], described[name], strict=True)]
        rows = [(text, f"{name}/{i}.png") for i, text in enumerate(captions)]
        if name == "train":
            with atomic_file(folder / "captions.txt") as tmp:
                tmp.write_text("\n".join(captions) + "\n", encoding="utf-8")
        write_tsv(folder / f"{name}_pairs.tsv", "text\tpath", rows[:sizes.pairs] if name == "test" else rows)
    test = labels["test"]
    write_tsv(folder / "test.tsv", "label\tpath", [(CLASSES[c], f"test/{i}.png") for i, c in enumerate(test)])
    pool = min(sizes.pool, len(test))
    write_tsv(folder / "grid_pairs.tsv", "text\tpath",
              [(text, f"test/{i}.png") for text, _ in GRID_CAPTIONS for i in range(pool)])
    manifest = {"source": "Fashion-MNIST", "seed": SEED, "counts": {k: len(v) for k, v in labels.items()},
                "pairs": min(sizes.pairs, len(test)), "pool": pool, "labels": labels, "attributes": attributes}
    if attributes:
        manifest.update({"words": {k: [list(w) for w in v] for k, v in described.items()}, "thresholds": cuts})
    atomic_write_json(manifest_path, manifest)
    return manifest


def clip_config(sizes: Sizes, image_size: int = 28) -> dict[str, Any]:
    """A small CLIP in the shape of ``configs/clip`` (pre-norm towers, ``clr`` head with projections): a ViT
    with ``sizes.patch`` patches and a text transformer of ``sizes.width`` wide and ``sizes.layers`` deep."""
    width = sizes.width
    tower = {"type": "transformer", "hidden_size": width, "layers_num": sizes.layers, "heads_num": 4,
             "feedforward_size": 2 * width, "act": "gelu", "norm": "layernorm", "norm_position": "pre",
             "final_norm": True, "dropout": 0.0, "mask": "fully_visible"}
    patches = (image_size // sizes.patch) ** 2
    return {"model": {
        "embedding": {"parts": ["dual"], "norm": "none", "dropout": 0.0, "streams": [
            {"parts": ["word", "pos"], "vocab_size": 0, "emb_size": width, "max_seq_length": 24, "norm": "none",
             "dropout": 0.0},
            {"parts": ["patch", "pos"], "emb_size": width, "max_seq_length": patches + 1,
             "image_height": image_size, "image_width": image_size, "patch_size": sizes.patch, "cls_token": True,
             "norm": "layernorm", "dropout": 0.0}]},
        "encoder": {"type": "dual", "streams": [tower, tower]},
        "targets": [{"type": "clr", "feature_size": width, "projection": True, "poolings": ["mean", "first"]}]},
        "data": {"processor": "clip"}}


def complete_model(folder: Path) -> bool:
    """A model folder with its config and weights."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def class_ceiling(labels: Sequence[Hashable], k: int) -> float:
    """Recall@K of a model that knows only the class (or any key the captions carry, such as class and
    attributes): the right item is then a random one of those sharing its key."""
    counts = Counter(labels)
    return float(np.mean([min(k, counts[c]) / counts[c] for c in labels]))


def caption_keys(manifest: dict[str, Any], split: str, count: int) -> list[tuple[Any, ...]]:
    """What the first ``count`` captions of ``split`` say about their images: the class, and the attribute
    words when the data has them; ``class_ceiling`` of these bounds recall@K."""
    words = manifest.get("words", {}).get(split) if manifest.get("attributes") else None
    labels = manifest["labels"][split][:count]
    return [(label, *(words[i] if words else ())) for i, label in enumerate(labels)]


def top_retrievals(predictions: Path, pool: int) -> list[list[int]]:
    """Per grid caption, the pool indices of its ``TOP_K`` best images, from ``predict``'s ``image_rank``."""
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != pool * len(GRID_CAPTIONS):
        raise DataError(f"{predictions}: {len(rows)} predictions, expected {pool * len(GRID_CAPTIONS)}")
    out = []
    for c in range(len(GRID_CAPTIONS)):
        ranks = [rows[c * pool + i]["image_rank"] for i in range(pool)]
        out.append(sorted(range(pool), key=lambda i: (ranks[i], i))[:TOP_K])
    return out


def draw_grid(data: Path, top: list[list[int]], labels: list[int], out: Path) -> Path:
    """The top retrieved test images per caption, one row each, the caption as the row title; each image is
    titled with its true class (green when it is the caption's class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(top), TOP_K, figsize=(1.5 * TOP_K, 1.75 * len(top)), squeeze=False)
    for row, ((text, wanted), indices) in enumerate(zip(GRID_CAPTIONS, top, strict=True)):
        for col, index in enumerate(indices):
            ax = axes[row][col]
            with Image.open(data / "test" / f"{index}.png") as image:
                ax.imshow(np.asarray(image.convert("L")), cmap="gray_r")  # dark on white, as a product shot
            name = CLASSES[labels[index]]
            ax.set_title(name, fontsize=7, color="green" if name == wanted else "red")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(f"\u201c{text}\u201d", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"Top {TOP_K} test images for each caption (text \u2192 image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


@timed
def run(ctx: StageContext) -> StageReport:
    """Trains a small CLIP on captioned Fashion-MNIST, then zero-shot accuracy, recall@K and a retrieval grid."""
    sizes = QUICK if ctx.quick else FULL
    work = ctx.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    print(f"\n== Fashion-MNIST images with captions -> {data}", file=ctx.log, flush=True)
    manifest = write_data(data, sizes)
    test_labels: list[int] = manifest["labels"]["test"]

    vocab = work / "vocab.txt"
    if not vocab.is_file():
        ctx.command("WordPiece vocabulary of the training captions",
                    ["build-vocab", "--type", "wordpiece", "--corpus", str(data / "captions.txt"),
                     "--vocab-size", str(sizes.vocab), "--out", str(vocab), "--lowercase"])
    config = work / "clip.yaml"
    import yaml

    with atomic_file(config) as tmp:
        tmp.write_text(yaml.safe_dump(clip_config(sizes), sort_keys=False), encoding="utf-8")

    run_dir = work / "runs" / "clip"
    model = run_dir / "model"
    if not ((run_dir / "summary.json").is_file() and complete_model(model)):
        argv = ["finetune", "--task", "clip_retrieval", "--config", str(config), "--vocab", str(vocab),
                "--train", str(data / "train_pairs.tsv"), "--dev", str(data / "dev_pairs.tsv"), "--out", str(run_dir),
                "--steps", str(sizes.steps), "--batch-size", str(sizes.batch), "--lr", str(sizes.lr),
                f"train.eval_every={sizes.steps // 2}", "train.adam_bias_correction=true", "train.progress=false",
                "train.tensorboard=false"]
        if ctx.threads:
            argv.append(f"train.threads={ctx.threads}")
        if (run_dir / "checkpoints").is_dir():
            argv.append("--resume")
        ctx.command("train a small CLIP from random init on the caption pairs", argv)

    zero_shot = command_json(ctx, "zero-shot classification of the test images",
                                ["evaluate", "--task", "zero_shot", "--model", str(model), "--input",
                                 str(data / "test.tsv"), f"task.classes={','.join(CLASSES)}",
                                 f"task.template={PROMPT}"], work / "zero_shot.json")
    retrieval = command_json(ctx, "retrieval recall@K on held-out test pairs",
                                ["evaluate", "--model", str(model), "--input", str(data / "test_pairs.tsv")],
                                work / "retrieval.json")
    predictions = work / "grid_predictions.jsonl"
    if not predictions.is_file():
        ctx.command("rank the test pool for each grid caption",
                    ["predict", "--model", str(model), "--input", str(data / "grid_pairs.tsv"),
                     "--out", str(predictions)])
    top = top_retrievals(predictions, manifest["pool"])
    grid = draw_grid(data, top, test_labels, work / "retrieval_grid.png")
    return report(ctx, manifest, zero_shot, retrieval, top, grid, config, run_dir)


def report(ctx: StageContext, manifest: dict[str, Any], zero_shot: dict[str, Any], retrieval: dict[str, Any],
           top: list[list[int]], grid: Path, config: Path, run_dir: Path) -> StageReport:
    """The stage's report: headline figures, the two metrics tables, the grid, curves and shown retrievals."""
    work, pairs = ctx.work, manifest["pairs"]
    test_labels = manifest["labels"]["test"]
    pair_labels = test_labels[:pairs]
    headline = {"zero_shot_accuracy": round(zero_shot["accuracy"], 4)}
    headline.update({key: round(retrieval[key], 4) for key in retrieval if "_r@" in key})
    chance = 1 / len(CLASSES)
    tables = [
        Table(f"Zero-shot classification of {int(zero_shot['examples'])} test images (prompt '{PROMPT}')",
              ["metric", "CLIP", "chance"],
              [["accuracy", zero_shot["accuracy"], chance], ["macro-F1", zero_shot["macro_f1"], chance]]),
        Table(f"Retrieval recall@K on {pairs} held-out test pairs (one caption per image)",
              ["direction", "R@1", "R@5", "R@10"],
              [["text \u2192 image", *(retrieval[f"t2i_r@{k}"] for k in (1, 5, 10))],
               ["image \u2192 text", *(retrieval[f"i2t_r@{k}"] for k in (1, 5, 10))],
               ["chance", *(min(k / pairs, 1.0) for k in (1, 5, 10))],
               ["best possible knowing only the class", *(class_ceiling(pair_labels, k) for k in (1, 5, 10))]]),
    ]
    figures = [Figure(grid.relative_to(work).as_posix(),
                      f"Top {TOP_K} of {manifest['pool']} test images for a few captions; titles give each "
                      "image's true class (green: the caption's class)")]
    curves = run_dir / "curves.png"
    if curves.is_file():
        figures.insert(0, Figure(curves.relative_to(work).as_posix(), "CLIP training: contrastive loss and lr"))
    samples = [{"input": text, "expected": f"{TOP_K} x {wanted}",
                "got": ", ".join(CLASSES[test_labels[i]] for i in indices)}
               for (text, wanted), indices in zip(GRID_CAPTIONS, top, strict=True)]
    counts = manifest["counts"]
    summary = (f"A small CLIP (ViT and text transformer, random init) trained contrastively on {counts['train']} "
               f"Fashion-MNIST images, each with a caption drawn from {len(TEMPLATES)} templates and 4 names per "
               f"class. Zero-shot: each of {counts['test']} test images takes the class whose prompt "
               f"'{PROMPT}' is nearest; chance is {chance:.2f}. Recall@K ranks {pairs} held-out test pairs both "
               "ways; captions name only the class, so an image is told apart only from other classes: the "
               "table gives the best recall a class-perfect model can reach.")
    return StageReport(stage="vision-language", title="Vision-language: a small CLIP on captioned Fashion-MNIST",
                       summary=summary, headline=headline, tables=tables, figures=figures,
                       configs={"clip": config.relative_to(work).as_posix()}, commands=list(ctx.commands),
                       runs=[run_summary("clip", run_dir)], samples=samples)
