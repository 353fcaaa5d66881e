"""The ``classification`` task: text classification of single sentences and pairs, multi-label, regression.

Data: TencentPretrain's TSV (``label text_a [text_b]``) or JSONL (``tasks/text_io.py``), tokenized in memory
with the model folder's tokenizer, batches padded to their longest example. Task options (``task.<key>=value``
on the command line, recorded in the fine-tuned model's ``config.json``):

- ``kind``: ``single`` (one label per example, cross-entropy), ``multi_label`` (labels joined by
  ``label_separator``, default ``,``, or a JSON list; sigmoid + the registered ``bce`` loss; a label is
  predicted when its probability >= ``threshold``) or ``regression`` (a float label; the ``mse`` loss).
- ``pooling`` (first/mean/max/last) and ``pooler`` (dense + tanh, as BERT's classifier) of the ``cls`` head.

The label set is the train file's labels, sorted (numerically when every label is an integer), recorded in
the model; a dev/test/predict label outside it is refused, naming ``file:line``. Labels are strings.
Metrics (scikit-learn / scipy): single: accuracy, macro-F1; multi-label: micro-F1, macro-F1, subset accuracy;
regression: Pearson, Spearman, MSE. The best dev checkpoint is chosen by accuracy / micro-F1 / Pearson.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modaloom.config_schema import build, choice, to_dict
from modaloom.errors import ConfigError, DataError
from modaloom.registry import register
from modaloom.tasks.finetune import FinetuneTask, check_vocabulary, resolve_tokenizer
from modaloom.tasks.text_io import MemoryLoader, Row, encode_pairs, read_rows

LOSSES = {"single": "cross_entropy", "multi_label": "bce", "regression": "mse"}
SELECTION = {"single": "accuracy", "multi_label": "micro_f1", "regression": "pearson"}


@dataclass
class ClassificationOptions:
    """Options of the classification task (``task.<key>=value``)."""

    # single label (cross-entropy), several labels (BCE) or a score (MSE)
    kind: str = choice("single", "single", "multi_label", "regression")
    label_separator: str = ","  # multi_label: between the labels of one TSV field
    threshold: float = 0.5  # multi_label: probability from which a label is predicted
    # how the sequence becomes one vector for the head
    pooling: str = choice("first", "first", "mean", "max", "last")
    pooler: bool = True  # dense + tanh on the pooled vector before the output layer (BERT's classifier)


def sort_labels(labels: set[str]) -> list[str]:
    """Sorted label names: by integer value when every label is one, else as strings."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


@register("task", "classification")
class ClassificationTask(FinetuneTask):
    """Text classification: reader, ``cls`` head with the kind's loss, scikit-learn metrics, predictions."""

    name = "classification"
    Options = ClassificationOptions  # its task.<key> options (docs/config-reference.md)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = build(ClassificationOptions, dict(self.inputs_.options), path="task")
        self.labels: list[str] = []
        self.truncated: dict[str, int] = {}

    @property
    def selection_metric(self) -> str:  # type: ignore[override]
        return SELECTION[self.options.kind]

    # ---- labels
    def parse_label(self, row: Row) -> Any:
        """The row's label(s) as strings (a float for regression); a missing or malformed one names file:line."""
        raw, kind = row.label, self.options.kind
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise DataError(f"{row.where}: empty label")
        if kind == "regression":
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise DataError(f"{row.where}: label {raw!r} is not a number (task.kind=regression)") from None
            if not math.isfinite(value):
                raise DataError(f"{row.where}: label {raw!r} is not a finite number")
            return value
        if kind == "multi_label":
            parts = raw if isinstance(raw, list) else str(raw).split(self.options.label_separator)
            names = sorted({str(p).strip() for p in parts if str(p).strip()})
            if not names:
                raise DataError(f"{row.where}: no label in {raw!r} (separator {self.options.label_separator!r})")
            return names
        if isinstance(raw, (list, dict)):
            raise DataError(f"{row.where}: label {raw!r} is not a single value; multi-label data needs "
                            f"task.kind=multi_label")
        return str(raw).strip()

    def label_target(self, row: Row) -> Any:
        """The training target of a labelled row: class index, 0/1 vector, or float; unknown labels refused."""
        value = self.parse_label(row)
        kind = self.options.kind
        if kind == "regression":
            return float(value)
        index = self.label_index
        names = value if kind == "multi_label" else [value]
        unknown = [n for n in names if n not in index]
        if unknown:
            shown = ", ".join(self.labels[:20]) + (" ..." if len(self.labels) > 20 else "")
            raise DataError(f"{row.where}: label {unknown[0]!r} is not in the label set of the training file "
                            f"({shown})")
        if kind == "single":
            return index[value]
        vector = [0.0] * len(self.labels)
        for n in names:
            vector[index[n]] = 1.0
        return vector

    @property
    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    # ---- data
    def examples(self, path: Path, need_label: bool, what: str) -> list[dict[str, Any]]:
        """Tokenized examples of a file (labels converted when present); truncations counted under ``what``."""
        assert self.tokenizer is not None
        rows = read_rows(path, need_label)
        encoded = encode_pairs(self.tokenizer, rows, self.cfg.data.seq_length)
        self.truncated[what] = encoded.truncated
        if encoded.truncated:
            print(f"modaloom {self.name}: {encoded.truncated} of {len(rows)} examples of {path} were longer than "
                  f"{self.cfg.data.seq_length} tokens and truncated (longest segment first, from its end)",
                  file=sys.stderr)
        out = []
        labelled = all(r.label is not None for r in rows)
        for i, (row, ids, seg) in enumerate(zip(rows, encoded.input_ids, encoded.segment_ids, strict=True)):
            example: dict[str, Any] = {"input_ids": ids, "segment_ids": seg, "index": i}
            if labelled:
                example["label"] = self.label_target(row)
            out.append(example)
        return out

    def prepare(self) -> None:
        cfg, paths = self.cfg, self.paths
        self.tokenizer, where = resolve_tokenizer(paths.init_from, self.inputs_.vocab)
        check_vocabulary(cfg, self.tokenizer, where)
        max_positions = cfg.model.embedding.max_seq_length
        if "pos" in cfg.model.embedding.parts and cfg.data.seq_length > max_positions \
                and "data.seq_length" not in self.inputs_.overridden:
            cfg.data.seq_length = max_positions  # the default 128 on a model with fewer positions
        if "pos" in cfg.model.embedding.parts and cfg.data.seq_length > max_positions:
            raise ConfigError(f"data.seq_length {cfg.data.seq_length} exceeds the model's max_seq_length "
                              f"{max_positions}; lower --seq-length")
        train_rows = read_rows(paths.data, need_label=True)
        if self.options.kind != "regression":
            names: set[str] = set()
            for row in train_rows:
                value = self.parse_label(row)
                names.update(value if isinstance(value, list) else [value])
            self.labels = sort_labels(names)
            if self.options.kind == "single" and len(self.labels) < 2:
                raise DataError(f"{paths.data}: a single-label classifier needs at least 2 labels, found "
                                f"{self.labels}")
        self.train_examples = self.examples(paths.data, True, "train")
        self.dev_examples = self.examples(paths.eval_data, True, "dev") if paths.eval_data else None
        self.set_head()
        self.set_steps(len(self.train_examples))

    def set_head(self) -> None:
        """Replace the model's targets by one ``cls`` head sized for the labels, with the kind's loss."""
        from modaloom.config_schema import Source
        from modaloom.model_config import ModelConfig

        model = to_dict(self.cfg.model)
        model["targets"] = [{"type": "cls", "labels_num": max(1, len(self.labels)), "loss": LOSSES[self.options.kind],
                             "pooling": self.options.pooling, "pooler": self.options.pooler}]
        self.cfg.model = build(ModelConfig, model, Source(), "model")

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> MemoryLoader:
        assert self.tokenizer is not None
        rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
        return MemoryLoader(examples, self.cfg.train.batch_size, self.tokenizer.special_id("pad", "padding"),
                            shuffle=train, seed=self.cfg.train.seed, rank=rank, world_size=world,
                            group_by_length=self.cfg.train.group_by_length)

    def test_loader(self, path: Path) -> MemoryLoader:
        return self.loader(self.examples(path, True, "test"), False)

    def data_description(self) -> str:
        return (f"{len(self.train_examples)} training examples in {self.paths.data}, "
                f"{len(self.labels) or 'regression'} labels, {self.steps_per_epoch} steps/epoch")

    def identity(self) -> dict[str, Any]:
        assert self.tokenizer is not None
        return {"tokenizer": self.tokenizer.fingerprint(), "labels": self.labels, "kind": self.options.kind}

    # ---- model steps
    def logits(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The ``cls`` head's output for a batch (the labels stay out of the model: the task scores them)."""
        inputs = {k: v for k, v in batch.items() if k not in ("task_labels", "index")}
        return model(inputs).logits["cls"]

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(model, batch)
        head = getattr(model, "module", model).targets["cls"]
        loss = head.loss(logits, batch["task_labels"])
        metrics = {"loss": loss.detach()}
        if self.options.kind == "single":
            metrics["accuracy"] = (logits.argmax(-1) == batch["task_labels"]).float().mean().detach()
        return loss, metrics

    def eval_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        out = {"index": batch["index"], "logits": self.logits(model, batch).float()}
        if "task_labels" in batch:
            out["labels"] = batch["task_labels"]
        return out

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities (softmax / sigmoid), or the regression value."""
        if self.options.kind == "single":
            return logits.softmax(-1)
        if self.options.kind == "multi_label":
            return logits.sigmoid()
        return logits.reshape(-1)

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        if "labels" not in outputs:
            raise DataError("the evaluation file has no labels; `evaluate` needs a labelled file")
        logits, labels = outputs["logits"], outputs["labels"]
        kind = self.options.kind
        if kind == "single":
            loss = torch.nn.functional.cross_entropy(logits, labels).item()
            pred = logits.argmax(-1).numpy()
            gold = labels.numpy()
            return {"accuracy": float(accuracy_score(gold, pred)),
                    "macro_f1": float(f1_score(gold, pred, average="macro", labels=list(range(len(self.labels))),
                                               zero_division=0)),
                    "loss": loss, "examples": float(len(gold))}
        if kind == "multi_label":
            pred = (logits.sigmoid() >= self.options.threshold).int().numpy()
            gold = labels.int().numpy()
            return {"micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
                    "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
                    "subset_accuracy": float(accuracy_score(gold, pred)),
                    "loss": torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()).item(),
                    "examples": float(len(gold))}
        from scipy.stats import pearsonr, spearmanr

        pred_v, gold_v = logits.reshape(-1).double().numpy(), labels.double().numpy()
        constant = len(gold_v) < 2 or pred_v.std() == 0 or gold_v.std() == 0
        return {"pearson": float("nan") if constant else float(pearsonr(pred_v, gold_v)[0]),
                "spearman": float("nan") if constant else float(spearmanr(pred_v, gold_v)[0]),
                "mse": float(((pred_v - gold_v) ** 2).mean()), "examples": float(len(gold_v))}

    def prediction_records(self, outputs: dict[str, Any]) -> Any:
        order = torch.argsort(outputs["index"])
        scores = self.scores(outputs["logits"])[order]
        for row in scores.tolist():
            if self.options.kind == "regression":
                yield {"score": row}
                continue
            probabilities = {name: round(p, 6) for name, p in zip(self.labels, row, strict=True)}
            if self.options.kind == "single":
                yield {"label": self.labels[max(range(len(row)), key=row.__getitem__)],
                       "probabilities": probabilities}
            else:
                yield {"labels": [n for n, p in zip(self.labels, row, strict=True) if p >= self.options.threshold],
                       "probabilities": probabilities}

    # ---- the saved model
    def task_section(self) -> dict[str, Any]:
        return {"name": self.name, "options": to_dict(self.options), "labels": self.labels,
                "seq_length": self.cfg.data.seq_length, "truncated": dict(self.truncated)}

    def load_section(self, model_dir: Path, section: dict[str, Any]) -> None:
        """Restore options, labels and the tokenizer of a fine-tuned model folder."""
        from modaloom.tasks.finetune import resolve_tokenizer as resolve

        self.options = build(ClassificationOptions, dict(section.get("options") or {}), path="task.options")
        self.labels = [str(x) for x in section.get("labels") or []]
        self.tokenizer, where = resolve(model_dir, "")
        check_vocabulary(self.cfg, self.tokenizer, where)

    def input_loader(self, path: Path) -> MemoryLoader:
        """Batches of a file to predict or evaluate (labels, when every row has one, checked and kept)."""
        return self.loader(self.examples(path, False, "input"), False)
