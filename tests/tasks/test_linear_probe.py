"""``evaluate --task linear_probe``: a logistic regression on a frozen model's pooled features, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modaloom.cli.main import main
from modaloom.model import build_model
from modaloom.tasks.linear_probe import C_GRID, choose_c

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "plot", "very", "and"]
POSITIVE, NEGATIVE = WORDS[:3], WORDS[3:6]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny BERT saved with its vocab.txt: frozen random features still tell the words apart."""
    root = tmp_path_factory.mktemp("probe")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(0)  # the features are random: fixed, so the test does not depend on what ran before
    model = build_model({
        "embedding": {"parts": ["word", "pos", "seg"], "vocab_size": len(vocab), "emb_size": 16,
                      "max_seq_length": 16, "dropout": 0.0},
        "encoder": {"hidden_size": 16, "layers_num": 1, "heads_num": 2, "feedforward_size": 32, "dropout": 0.0},
        "targets": [{"type": "mlm", "tie_weights": True}]})
    model.save(root / "model")
    (root / "model" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return root / "model"


def write_split(path, count, seed):
    rng = np.random.default_rng(seed)
    lines = ["label\ttext_a"]
    for i in range(count):
        label, words = ("pos", POSITIVE) if i % 2 == 0 else ("neg", NEGATIVE)
        filler = list(rng.choice(WORDS[6:], size=3))
        lines.append(f"{label}\tthe film was {rng.choice(words)} {' '.join(filler)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def probe(capsys, model_dir, test, *options):
    capsys.readouterr()
    code = main(["evaluate", "--task", "linear_probe", "--model", str(model_dir), "--input", str(test), *options])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_linear_probe_separates_the_classes_and_picks_c_on_dev(tmp_path, model_dir, capsys):
    train, dev, test = (write_split(tmp_path / f"{n}.tsv", c, s) for n, c, s in
                        (("train", 80, 0), ("dev", 20, 1), ("test", 40, 2)))
    code, metrics = probe(capsys, model_dir, test, f"task.train={train}", f"task.dev={dev}")
    assert code == 0, metrics
    assert metrics["accuracy"] >= 0.8 and metrics["classes"] == 2 and metrics["examples"] == 40  # chance: 0.5
    assert metrics["c"] in C_GRID and metrics["dev_accuracy"] >= 0.8 and metrics["features"] == 16
    code, fixed = probe(capsys, model_dir, test, f"task.train={train}", "task.c=0.5", "task.pooling=first")
    assert code == 0 and fixed["c"] == 0.5 and "dev_accuracy" not in fixed
    # refusals name what to change
    code, err = probe(capsys, model_dir, test)
    assert code == 2 and "task.train=FILE" in err
    (tmp_path / "odd.tsv").write_text("label\ttext_a\nmaybe\tthe film\n")
    code, err = probe(capsys, model_dir, tmp_path / "odd.tsv", f"task.train={train}")
    assert code == 2 and "odd.tsv:2: label 'maybe' is not one of the train file's classes" in err


def test_choose_c_takes_the_best_dev_accuracy_and_the_smallest_c_on_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    c, accuracy = choose_c((x[:30], y[:30]), (x[30:], y[30:]), 200)
    assert accuracy >= 0.8 and c in C_GRID
    flat = (np.zeros((6, 2)), np.array([0, 1, 0, 1, 0, 1]))  # every C predicts alike: the first is kept
    assert choose_c(flat, flat, 50)[0] == C_GRID[0]
