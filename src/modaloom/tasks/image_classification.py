"""The ``image_classification`` task: a ViT-like model (patch embedding) fine-tuned to classify images.

Data (``tasks/image_io.py``): TencentPretrain's TSV (header ``label path``, image paths relative to the TSV's
folder), JSONL ``{"label", "image"}``, or an ImageFolder directory (one sub-folder per class). Images are
decoded with Pillow, resized to the model's ``image_height`` x ``image_width`` and normalised as the model's
data processor does (``data.processor`` vit: ImageNet mean/std; override with ``task.norm``). No tokenizer.

Task options (``task.<key>=value``, recorded in the fine-tuned model's ``config.json``):

- ``pooling`` (first: the class token, as ViT; mean: over every patch) of the ``cls`` head, a linear layer
  (no pooler, as ``ViTForImageClassification``);
- ``norm`` (imagenet/clip/half/none; empty: the processor's), ``crop`` for training (center, resize,
  random_resized with ``scale_min``) and ``hflip``; evaluation always resizes the shorter side and cuts the
  centre;
- ``skip_bad_images``: a training or dev example whose image is missing or does not decode is skipped and
  counted (default: an error naming file:line); files given to predict/evaluate never skip.

The label set is the train file's labels (sorted, numerically when all are integers); an unknown label in a
dev/test/evaluate file names ``file:line``. Metrics (scikit-learn): accuracy (selects the best dev model),
macro-F1, loss. ``predict`` writes ``{"label", "probabilities"}`` per input row, in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modaloom.config_schema import build, choice, to_dict
from modaloom.data.images import CROP_MODES, IMAGE_NORMS
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.tasks.base import InitReport
from modaloom.tasks.classification import sort_labels
from modaloom.tasks.finetune import FinetuneTask
from modaloom.tasks.image_io import (
    ImageLoader,
    ImageRow,
    image_embedding,
    load_images,
    model_transform,
    processor_norm,
    read_image_rows,
)

MODEL_KEYS = ("pixel_values",)


@dataclass
class ImageClassificationOptions:
    """Options of the image classification task (``task.<key>=value``)."""

    pooling: str = choice("first", "first", "mean")  # how the patches become one vector for the head
    norm: str = choice("", "", *IMAGE_NORMS)  # empty: the model's data processor's normalisation
    crop: str = choice("center", *CROP_MODES)  # training crop; evaluation always uses center
    scale_min: float = 0.5  # random_resized: smallest area fraction
    hflip: bool = False  # training: flip left-right with probability 0.5
    skip_bad_images: bool = False  # training/dev: skip (and count) unreadable images instead of failing


PRETRAINING_ONLY_PARTS = ("drop_masked",)  # MAE drops masked patches; a classifier sees every patch


def without_pretraining_parts(model: dict[str, Any]) -> dict[str, Any]:
    """The model dict with weightless pre-training-only embedding parts (MAE's ``drop_masked``) removed, so that
    an MAE-pre-trained encoder is fine-tuned on whole images, as He et al. 2022 do."""
    sections = list(model["embedding"].get("streams") or []) or [model["embedding"]]
    for section in sections:
        section["parts"] = [p for p in section.get("parts") or [] if p not in PRETRAINING_ONLY_PARTS]
    return model


def resized_head_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Head keys of ``state`` whose shape differs from the model's (e.g. an ImageNet head of 1000 labels)."""
    own = model.state_dict()
    return sorted(k for k, v in state.items() if k.startswith("targets.") and k in own and own[k].shape != v.shape)


@register("task", "image_classification")
class ImageClassificationTask(FinetuneTask):
    """Image classification: image reader, ``cls`` head (linear on the pooled patches), accuracy / macro-F1."""

    name = "image_classification"
    Options = ImageClassificationOptions  # its task.<key> options (docs/config-reference.md)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(ImageClassificationOptions, dict(self.inputs_.options), path="task")
        self.labels: list[str] = []
        self.skipped: dict[str, int] = {}

    # ---- data
    @property
    def norm(self) -> str:
        return self.options.norm or processor_norm(self.cfg.data.processor or "vit", "imagenet")

    def label_index(self, row: ImageRow) -> int:
        """The class id of a row's label; an empty or unknown label names file:line."""
        label = (row.label or "").strip()
        if not label:
            raise DataError(f"{row.where}: empty label")
        try:
            return self.labels.index(label)
        except ValueError:
            shown = ", ".join(self.labels[:20]) + (" ..." if len(self.labels) > 20 else "")
            raise DataError(f"{row.where}: label {label!r} is not in the label set of the training file "
                            f"({shown})") from None

    def examples(self, path: Path, need_label: bool, what: str, skip_bad: bool) -> list[dict[str, Any]]:
        """In-memory examples of a file: image bytes, class id when every row has a label, input order."""
        rows = read_image_rows(path, ("label",) if need_label else ())
        loaded = load_images(rows, skip_bad, what, self.name)
        self.skipped[what] = len(loaded.skipped)
        labelled = all(r.label is not None for r in loaded.rows)
        out = []
        for i, (row, data) in enumerate(zip(loaded.rows, loaded.images, strict=True)):
            example: dict[str, Any] = {"image": data, "where": row.where, "index": i}
            if labelled:
                example["label"] = self.label_index(row)
            out.append(example)
        return out

    def prepare(self) -> None:
        paths, skip = self.paths, self.options.skip_bad_images
        image_embedding(self.cfg.model)  # refuse a model without an image part before reading anything
        rows = read_image_rows(paths.data, ("label",))
        self.labels = sort_labels({(r.label or "").strip() for r in rows} - {""})
        if len(self.labels) < 2:
            raise DataError(f"{paths.data}: an image classifier needs at least 2 labels, found {self.labels}")
        self.train_examples = self.examples(paths.data, True, "train", skip)
        self.dev_examples = self.examples(paths.eval_data, True, "dev", skip) if paths.eval_data else None
        self.set_head()
        self.set_steps(len(self.train_examples))

    def set_head(self) -> None:
        """Replace the model's targets by one ``cls`` head: a linear layer on the pooled image tokens (and drop
        pre-training-only embedding parts)."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = without_pretraining_parts(to_dict(self.cfg.model))
        model["targets"] = [{"type": "cls", "labels_num": len(self.labels), "loss": "cross_entropy",
                             "pooling": self.options.pooling, "pooler": False}]
        self.cfg.model = build(ModelConfig, model, Source(), "model")

    def build_model(self) -> torch.nn.Module:
        """As ``Task.build_model``, but a head of another size in the model folder (a converted ImageNet
        classifier) is replaced by a new one, listed in the report, instead of refused."""
        if self.paths.init_from is None:
            return super().build_model()
        from modaloom.model import WEIGHTS_NAME, build_model
        from modaloom.weights import load_weights_checked, read_weights

        model = build_model(self.cfg.model)
        state = read_weights(Path(self.paths.init_from) / WEIGHTS_NAME)
        resized = resized_head_keys(model, state)
        kept = {k: v for k, v in state.items() if k not in resized}
        missing, unexpected = load_weights_checked(model, kept, str(self.paths.init_from), strict=False)
        shapes = [f"{k} {tuple(state[k].shape)} (head of another size)" for k in resized]
        self.init_report = InitReport(Path(self.paths.init_from), missing, [*unexpected, *shapes])
        return model

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> ImageLoader:
        o = self.options
        transform = model_transform(self.cfg.model, self.norm, o.crop if train else "center",
                                    o.hflip and train, o.scale_min)
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        return ImageLoader(examples, self.cfg.train.batch_size, 0, shuffle=train, seed=self.cfg.train.seed,
                           rank=rank, world_size=world, transform=transform)

    def test_loader(self, path: Path) -> ImageLoader:
        return self.loader(self.examples(path, True, "test", False), False)

    def input_loader(self, path: Path) -> ImageLoader:
        """Batches of a file to predict or evaluate (labels, when every row has one, checked and kept)."""
        return self.loader(self.examples(path, False, "input", False), False)

    def data_description(self) -> str:
        return (f"{len(self.train_examples)} training images in {self.paths.data}, {len(self.labels)} labels, "
                f"{self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        return {"labels": self.labels, "norm": self.norm}

    # ---- model steps
    def logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        return model({k: batch[k] for k in MODEL_KEYS}).logits["cls"]

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(model, batch)
        head = getattr(model, "module", model).targets["cls"]
        loss = head.loss(logits, batch["task_labels"])
        accuracy = (logits.argmax(-1) == batch["task_labels"]).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy.detach()}

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        out = {"index": batch["index"], "logits": self.logits(model, batch).float()}
        if "task_labels" in batch:
            out["labels"] = batch["task_labels"]
        return out

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        if "labels" not in outputs:
            raise DataError("the evaluation file has no labels; `evaluate` needs a labelled file")
        logits, labels = outputs["logits"], outputs["labels"]
        pred, gold = logits.argmax(-1).numpy(), labels.numpy()
        return {"accuracy": float(accuracy_score(gold, pred)),
                "macro_f1": float(f1_score(gold, pred, average="macro", labels=list(range(len(self.labels))),
                                           zero_division=0)),
                "loss": torch.nn.functional.cross_entropy(logits, labels).item(), "examples": float(len(gold))}

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        order = torch.argsort(outputs["index"])
        for row in outputs["logits"][order].softmax(-1).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            yield {"label": self.labels[best],
                   "probabilities": {name: round(p, 6) for name, p in zip(self.labels, row, strict=True)}}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": {**to_dict(self.options), "norm": self.norm}, "labels": self.labels,
                "skipped": dict(self.skipped)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore the options and labels of a fine-tuned model folder (there is no tokenizer)."""
        self.options = build(ImageClassificationOptions, dict(section.get("options") or {}), path="task.options")
        self.labels = [str(x) for x in section.get("labels") or []]
        if len(self.labels) < 2:
            raise ConfigError(f"{model_dir}: config.json task.labels holds {self.labels}; fine-tune the model again")
