"""The sentence_embedding task: pair reading, the cosine and SimCSE losses, Spearman, and finetune -> predict ->
evaluate -> features end to end (siamese and simcse) on a tiny BERT pre-trained here for a few steps."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modaloom.cli.main import main
from modaloom.errors import DataError
from modaloom.tasks.sentence_embedding import correlations, read_pair_rows, score_of
from tests.train.data_helpers import WORDS, tiny_bert_config, write_dataset


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- units


def test_pairs_read_from_tsv_and_jsonl_and_bad_rows_name_their_line(tmp_path):
    rows = read_pair_rows(write(tmp_path / "p.tsv", "label\ttext_a\ttext_b\n0.8\tthe cat\ta cat\n"), True)
    assert [(score_of(r), r.text_a, r.text_b) for r in rows] == [(0.8, "the cat", "a cat")]
    rows = read_pair_rows(write(tmp_path / "p.jsonl", '{"label": 1, "text_a": "x", "text_b": "y"}\n'), True)
    assert score_of(rows[0]) == 1.0
    with pytest.raises(DataError, match=r"s.tsv:2: no text_b"):
        read_pair_rows(write(tmp_path / "s.tsv", "label\ttext_a\n1\tthe cat\n"), True)
    with pytest.raises(DataError, match=r"b.tsv:2: label 'high' is not a number"):
        score_of(read_pair_rows(write(tmp_path / "b.tsv", "label\ttext_a\ttext_b\nhigh\tx\ty\n"), True)[0])


def test_spearman_is_scipys_and_constant_input_is_nan():
    from scipy.stats import spearmanr

    predicted, gold = torch.tensor([0.1, 0.5, 0.2, 0.9]), torch.tensor([1.0, 3.0, 2.0, 2.5])
    assert correlations(predicted, gold)["spearman"] == pytest.approx(spearmanr(predicted, gold)[0])
    assert np.isnan(correlations(torch.ones(3), gold[:3])["spearman"])


def make_task(kind, **options):
    from modaloom.tasks.sentence_embedding import SentenceEmbeddingTask

    task = SentenceEmbeddingTask.__new__(SentenceEmbeddingTask)
    from modaloom.config_schema import build
    from modaloom.tasks.sentence_embedding import SentenceEmbeddingOptions

    task.options = build(SentenceEmbeddingOptions, {"kind": kind, **options}, path="task")
    task.label_max, task.contrastive, task.name = 5.0, None, "sentence_embedding"
    return task


class Fixed(torch.nn.Module):
    """A stand-in model whose encoder output is given: one token per row."""

    def __init__(self, vectors):
        super().__init__()
        self.vectors = vectors

    def encode(self, inputs):
        return self.vectors[:, None, :], None


def test_siamese_loss_is_mse_of_cosine_against_scaled_labels():
    vectors = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    batch = {"input_ids": torch.zeros(4, 1, dtype=torch.long), "attention_mask": torch.ones(4, 1),
             "segment_ids": torch.zeros(4, 1, dtype=torch.long), "scores": torch.tensor([5.0, 2.5])}
    loss, _ = make_task("siamese").loss(Fixed(vectors), batch)
    cos = torch.tensor([1.0, 2 ** -0.5])
    assert loss.item() == pytest.approx(((cos - torch.tensor([1.0, 0.5])) ** 2).mean().item(), abs=1e-6)


def test_simcse_loss_is_the_registered_infonce_with_temperature():
    from modaloom.losses import build_loss

    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(6, 4, generator=gen)
    batch = {"input_ids": torch.zeros(6, 1, dtype=torch.long), "attention_mask": torch.ones(6, 1),
             "segment_ids": torch.zeros(6, 1, dtype=torch.long)}
    loss, metrics = make_task("simcse", temperature=0.1).loss(Fixed(vectors), batch)
    a, b = torch.nn.functional.normalize(vectors, dim=-1).chunk(2)
    expected = build_loss(SimpleNamespace(label="x", gather=False), "infonce")(a, b, torch.tensor(10.0)).loss
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6) and 0 <= metrics["accuracy"] <= 1
    logits = 10.0 * a @ b.T
    direct = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
              + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    assert loss.item() == pytest.approx(direct.item(), abs=1e-5)


# ---------------------------------------------------------------- end to end through the CLI


def write_sts(path, count, seed):
    """Pairs scored 0-5 (as STS-B) by the words they share."""
    rng = random.Random(seed)
    lines = ["label\ttext_a\ttext_b"]
    for _ in range(count):
        a = [rng.choice(WORDS) for _ in range(5)]
        b = a[:rng.randint(0, 5)] + [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
        b = b or [rng.choice(WORDS)]
        score = 5.0 * len(set(a) & set(b)) / len(set(a) | set(b))
        lines.append(f"{score:.2f}\t{' '.join(a)}\t{' '.join(b)}")
    return write(path, "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    data = write_dataset(root / "bert_data")
    config = tiny_bert_config(root / "tiny.yaml", vocab_size=38)
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "pre"),
                 "--steps", "2", "train.progress=false", "train.tensorboard=false"]) == 0
    files = {"train": write_sts(root / "train.tsv", 24, 1), "dev": write_sts(root / "dev.tsv", 12, 2),
             "test": write_sts(root / "test.tsv", 10, 3)}
    return root, files


def finetune(root, files, out, *extra):
    return main(["finetune", "--task", "sentence_embedding", "--model", str(root / "pre" / "model"),
                 "--train", str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]),
                 "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                 *extra, "train.progress=false", "train.tensorboard=false"])


@pytest.mark.parametrize("kind", ["siamese", "simcse"])
def test_finetune_predict_evaluate_features(pretrained, tmp_path, kind, capsys):
    root, files = pretrained
    train = files["train"]
    if kind == "simcse":  # plain sentences, one a line
        sentences = [s for line in train.read_text().splitlines()[1:] for s in line.split("\t")[1:]]
        train = write(tmp_path / "sentences.txt", "\n".join(sentences) + "\n")
    out = tmp_path / "ft"
    assert finetune(root, {**files, "train": train}, out, f"task.kind={kind}", "task.pooling=mean") == 0
    model = out / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["task"]["name"] == "sentence_embedding" and config["task"]["options"]["kind"] == kind
    largest = max(float(line.split("\t")[0]) for line in files["train"].read_text().splitlines()[1:])
    assert config["task"]["label_max"] == (largest if kind == "siamese" else 1.0)
    assert [t["type"] for t in config["model"]["targets"]] == ["mlm", "sp"]  # the source heads, untouched
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "spearman" and -1 <= summary["test/spearman"] <= 1

    # the source heads did not change; the encoder did
    from modaloom.model import load

    before, after = load(root / "pre" / "model").state_dict(), load(model).state_dict()
    assert torch.equal(before["targets.sp.output.weight"], after["targets.sp.output.weight"])
    weight = next(k for k, v in after.items() if k.startswith("encoder.") and v.dim() == 2)
    assert not torch.equal(before[weight], after[weight])

    # predict on pairs: one cosine similarity per pair; evaluate: Spearman of those against the labels
    pairs = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(pairs)]) == 0
    similarities = [json.loads(line)["similarity"] for line in pairs.read_text().splitlines()]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    gold = [float(line.split("\t")[0]) for line in files["test"].read_text().splitlines()[1:]]
    assert metrics["spearman"] == pytest.approx(correlations(torch.tensor(similarities), torch.tensor(gold))["spearman"],
                                                abs=1e-5)
    assert metrics["spearman"] == pytest.approx(summary["test/spearman"], abs=1e-5)

    # predict on sentences: embeddings, the vectors `modaloom features` gives with the task's pooling
    text = write(tmp_path / "s.txt", "the cat sat\nold books near warm fires\n")
    assert main(["predict", "--model", str(model), "--input", str(text), "--out", str(tmp_path / "e.jsonl")]) == 0
    embeddings = np.array([json.loads(line)["embedding"] for line in (tmp_path / "e.jsonl").read_text().splitlines()])
    assert main(["features", "--model", str(model), "--input", str(text), "--pooling", "mean",
                 "--out", str(tmp_path / "f.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "f.npy"), embeddings, atol=1e-5)
    cos = float(embeddings[0] @ embeddings[1] / np.linalg.norm(embeddings[0]) / np.linalg.norm(embeddings[1]))
    line = tmp_path / "pair.tsv"
    write(line, "text_a\ttext_b\nthe cat sat\told books near warm fires\n")
    assert main(["predict", "--model", str(model), "--input", str(line), "--out", str(tmp_path / "q.jsonl")]) == 0
    assert json.loads((tmp_path / "q.jsonl").read_text())["similarity"] == pytest.approx(cos, abs=1e-5)


def test_dev_file_must_hold_labelled_pairs(pretrained, tmp_path, capsys):
    root, files = pretrained
    dev = write(tmp_path / "dev.tsv", "label\ttext_a\n1\tthe cat\n")
    assert finetune(root, {**files, "dev": dev}, tmp_path / "o") == 2
    assert f"{dev}:2: no text_b" in capsys.readouterr().err
