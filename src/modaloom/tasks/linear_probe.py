"""Linear probe: a logistic regression on a frozen model's pooled features (``evaluate --task linear_probe``).

``modaloom evaluate --task linear_probe --model DIR --input test.tsv task.train=train.tsv [task.dev=dev.tsv]
[task.c=1.0] [task.pooling=mean] [task.normalize=true]``. The three files are labelled examples as for
classification (TSV with header ``label text_a [text_b]``, or JSONL). Each example becomes one vector exactly as
``modaloom features`` makes it (``tasks/features.row_features``: embedding + encoder of the saved model, frozen,
pooled over real tokens, L2-normalised by default); scikit-learn's ``LogisticRegression`` (lbfgs, multinomial)
is fitted on the train vectors and scored on the test vectors. ``c`` is scikit-learn's ``C`` (inverse
regularisation strength); 0 (the default) picks it on the dev file from ``C_GRID`` (best dev accuracy, the
smaller ``C`` on ties), and without a dev file takes scikit-learn's default 1.0. The classes are the train
file's labels, sorted; a test or dev label outside them is an error naming its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modaloom.config_schema import build, choice
from modaloom.errors import ConfigError, DataError
from modaloom.tasks.classification import sort_labels
from modaloom.tasks.text_io import Row, read_rows

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # searched on the dev file when ``c`` is 0
DEFAULT_C = 1.0  # scikit-learn's default, without a dev file


@dataclass
class ProbeOptions:
    """Options of ``linear_probe`` (``evaluate ... task.<key>=value``)."""

    train: str = ""  # labelled file the regression is fitted on (required)
    dev: str = ""  # labelled file that picks c from C_GRID (optional)
    c: float = 0.0  # scikit-learn's C; 0: chosen on dev, else DEFAULT_C
    pooling: str = choice("mean", "first", "mean", "max", "last")
    normalize: bool = True  # L2-normalise every vector before the regression
    max_iter: int = 1000  # lbfgs iterations

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("linear_probe needs the labelled examples to fit on: task.train=FILE")
        if self.c < 0:
            raise ConfigError(f"task.c must be > 0 (or 0: chosen on task.dev), got {self.c}")
        if self.max_iter < 1:
            raise ConfigError(f"task.max_iter must be >= 1, got {self.max_iter}")


def label_ids(rows: list[Row], classes: list[str]) -> np.ndarray:
    """Each row's class index; a label outside ``classes`` names its line."""
    out = []
    for row in rows:
        label = str(row.label).strip()
        if label not in classes:
            raise DataError(f"{row.where}: label {label!r} is not one of the train file's classes {classes}")
        out.append(classes.index(label))
    return np.asarray(out, dtype=np.int64)


def fit(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int) -> Any:
    """A multinomial logistic regression (lbfgs) on fixed features."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter).fit(features, labels)


def choose_c(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
             max_iter: int) -> tuple[float, float]:
    """(C of ``C_GRID`` with the best dev accuracy, the smallest on ties; that accuracy)."""
    best_c, best = DEFAULT_C, -1.0
    for c in C_GRID:
        accuracy = float((fit(*train, c, max_iter).predict(dev[0]) == dev[1]).mean())
        if accuracy > best:
            best_c, best = c, accuracy
    return best_c, best


def linear_probe(model_dir: Path, test_path: Path, options: dict[str, Any], vocab: str = "",
                 seq_length: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Fit on ``task.train``'s features, score on ``test_path``'s: accuracy, macro-F1, the C used and counts."""
    from sklearn.metrics import f1_score

    from modaloom.model import load
    from modaloom.tasks.features import row_features
    from modaloom.tasks.finetune import resolve_tokenizer

    o = build(ProbeOptions, dict(options), path="task")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    tokenizer, _ = resolve_tokenizer(model_dir, vocab)
    model = load(model_dir).eval()
    if list(model.config.embedding.parts) == ["dual"]:
        raise ConfigError(f"linear_probe encodes text with one encoder; {model_dir} is a dual (two-tower) model")
    train_rows = read_rows(Path(o.train), need_label=True)
    classes = sort_labels({str(r.label).strip() for r in train_rows})
    if len(classes) < 2:
        raise DataError(f"{o.train}: a linear probe needs at least 2 classes, got {classes}")

    def encoded(rows: list[Row]) -> tuple[np.ndarray, np.ndarray]:
        features, _ = row_features(model, tokenizer, rows, o.pooling, o.normalize, seq_length, batch_size)
        return features, label_ids(rows, classes)

    train = encoded(train_rows)
    test = encoded(read_rows(test_path, need_label=True))
    out: dict[str, float] = {}
    c = o.c or DEFAULT_C
    if not o.c and o.dev:
        c, out["dev_accuracy"] = choose_c(train, encoded(read_rows(Path(o.dev), need_label=True)), o.max_iter)
    pred = fit(*train, c, o.max_iter).predict(test[0])
    out = {"accuracy": float((pred == test[1]).mean()),
           "macro_f1": float(f1_score(test[1], pred, average="macro", labels=list(range(len(classes))),
                                      zero_division=0)),
           **out, "c": float(c), "examples": float(len(test[1])), "train_examples": float(len(train[1])),
           "classes": float(len(classes)), "features": float(train[0].shape[1])}
    return out
