"""The tagging task: NER reading, first-piece label alignment and truncation, the CRF against brute force,
seqeval metrics, and finetune -> predict -> evaluate -> HF pipeline end to end through the CLI."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
from types import SimpleNamespace

import pytest
import torch

from modaloom.cli.main import main
from modaloom.errors import DataError
from modaloom.layers.crf import CRF, compact
from modaloom.tasks.tagging import (
    TaggingOptions,
    TaggingTask,
    entities,
    read_label2id,
    read_tag_rows,
    sort_tags,
)

WORDS = ["the", "sat", "on", "a", "mat", "while", "ran", "fast", "across", "and", "sang", "songs", "of", "summer",
         "rain", "fell", "over", "where", "people", "read", "books", "near", "warm", "fires", "every", "night"]
ANIMALS = ["cat", "cats", "dogs", "birds"]  # "cats" is two pieces: cat ##s


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def write_vocab(path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS + ["cat", "dogs", "birds", "old",
                                                                                  "towns", "##s"]))]
    return write(path, "\n".join(tokens) + "\n")


# ---------------------------------------------------------------- reading


def test_tsv_and_jsonl_rows(tmp_path):
    rows = read_tag_rows(write(tmp_path / "a.tsv", "text_a\tlabel\n在 北 京\tO B-LOC I-LOC\n"), True)
    assert [(r.tokens, r.labels, r.where) for r in rows] == [(["在", "北", "京"], ["O", "B-LOC", "I-LOC"],
                                                              f"{tmp_path / 'a.tsv'}:2")]
    rows = read_tag_rows(write(tmp_path / "a.jsonl", '{"tokens": ["a", "cat"], "labels": ["O", "B-ANI"]}\n'
                                                     '{"tokens": ["dogs"]}\n'), False)
    assert [(r.tokens, r.labels) for r in rows] == [(["a", "cat"], ["O", "B-ANI"]), (["dogs"], None)]


@pytest.mark.parametrize("name, text, message", [
    ("c.tsv", "text_a\tlabel\na cat\tO\n", r"c.tsv:2: 2 tokens but 1 labels"),
    ("e.tsv", "text_a\tlabel\na\tO\n\n", r"e.tsv:3: empty line"),
    ("h.tsv", "tokens\tlabel\na\tO\n", r"h.tsv:1: header .* has no column text_a"),
    ("l.tsv", "text_a\na\n", r"l.tsv:1: header .* has no column label"),
    ("j.jsonl", '{"tokens": ["a"], "labels": ["O"]}\n{"tokens": ["a"]\n', r"j.jsonl:2: malformed JSON"),
    ("m.jsonl", '{"tokens": ["a", "b"], "labels": ["O"]}\n', r"m.jsonl:1: 2 tokens but 1 labels"),
    ("s.jsonl", '{"tokens": "a b", "labels": ["O"]}\n', r"s.jsonl:1: tokens must be a list of strings"),
    ("n.jsonl", '{"tokens": ["a"]}\n', r"n.jsonl:1: no labels"),
])
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_tag_rows(write(tmp_path / name, text), need_labels=True)


def test_label2id_order_and_sorted_train_labels(tmp_path):
    assert read_label2id(write(tmp_path / "l.json", '{"O": 0, "B-PER": 2, "B-LOC": 1}')) == ["O", "B-LOC", "B-PER"]
    with pytest.raises(DataError, match="ids must be the integers 0..1"):
        read_label2id(write(tmp_path / "b.json", '{"O": 0, "B-PER": 3}'))
    assert sort_tags({"I-PER", "B-PER", "O", "B-LOC", "I-LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_msra_ner_loads_as_is():
    from tests.data.text_fixtures import shared_or_skip

    rows = read_tag_rows(shared_or_skip("datasets/msra_ner/dev.tsv"), need_labels=True)
    labels = read_label2id(shared_or_skip("datasets/msra_ner/label2id.json"))
    assert len(rows) == 2318 and {x for r in rows for x in r.labels or []} <= set(labels)
    assert read_tag_rows(shared_or_skip("datasets/msra_ner/test_nolabel.tsv"), need_labels=False)[0].labels is None


# ---------------------------------------------------------------- alignment and truncation


def task_with(tmp_path, seq_length=16, **options):
    from modaloom.data.tokenizers import load_tokenizer

    cfg = SimpleNamespace(data=SimpleNamespace(seq_length=seq_length))
    task = TaggingTask.__new__(TaggingTask)
    task.cfg, task.truncated = cfg, {}
    task.options = TaggingOptions(**options)
    task.labels = ["O", "B-ANI"]
    task.tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path / "v.txt"))})
    return task


def test_first_piece_carries_the_label_and_truncated_tokens_are_counted(tmp_path, capsys):
    task = task_with(tmp_path, seq_length=6)
    rows = read_tag_rows(write(tmp_path / "t.tsv", "text_a\tlabel\ncats ran\tB-ANI O\nthe cats sat fast\tO B-ANI O O\n"),
                         True)
    first, second = task.examples(rows, tmp_path / "t.tsv", "train")
    tok = task.tokenizer
    assert first["input_ids"] == [tok.cls_id, *tok.encode("cats"), *tok.encode("ran"), tok.sep_id]
    assert len(tok.encode("cats")) == 2 and first["starts"] == [1, 3] and first["label"] == [1, 0]
    # 4 pieces fit: the, cat, ##s, (sat); "fast" is cut off
    assert second["starts"] == [1, 2, 4] and second["words"] == 4 and len(second["input_ids"]) == 6
    assert task.truncated["train"] == 1 and "1 of 2 examples" in capsys.readouterr().err
    from modaloom.tasks.tagging import collate_tags

    batch = collate_tags([first, second], tok.pad_id)
    assert batch["tag_labels"][0].tolist() == [-100, 1, -100, 0, -100, -100]
    assert batch["word_mask"][1].tolist() == [0, 1, 1, 0, 1, 0] and batch["gold"][1].tolist() == [0, 1, 0, 0]


def test_lookup_without_special_tokens_is_tencentpretrain_layout(tmp_path):
    task = task_with(tmp_path, tokenize="lookup", special_tokens=False)
    rows = read_tag_rows(write(tmp_path / "t.tsv", "text_a\tlabel\ncats ran\tB-ANI O\n"), True)
    (example,) = task.examples(rows, tmp_path / "t.tsv", "train")
    assert example["input_ids"] == [task.tokenizer.unk_id, task.tokenizer.token_to_id("ran")]
    assert example["starts"] == [0, 1]


def test_unknown_label_names_file_and_line(tmp_path):
    task = task_with(tmp_path)
    rows = read_tag_rows(write(tmp_path / "d.tsv", "text_a\tlabel\na cat\tO B-ANI\ndogs\tB-DOG\n"), True)
    with pytest.raises(DataError, match=r"d.tsv:3: label 'B-DOG' is not in the label set of the training file"):
        task.examples(rows, tmp_path / "d.tsv", "dev")


# ---------------------------------------------------------------- CRF


def brute_force(crf, emissions, length):
    """Every tag sequence's score over the first ``length`` positions: (log Z, best path, score of a path)."""
    tags = crf.num_tags

    def score(path):
        s = crf.start_transitions[path[0]] + emissions[0, path[0]]
        for t in range(1, length):
            s = s + crf.transitions[path[t - 1], path[t]] + emissions[t, path[t]]
        return s + crf.end_transitions[path[-1]]

    paths = list(itertools.product(range(tags), repeat=length))
    scores = torch.stack([score(p) for p in paths])
    return torch.logsumexp(scores, 0), list(paths[int(scores.argmax())]), score


def test_crf_likelihood_and_viterbi_match_brute_force():
    torch.manual_seed(0)
    crf = CRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    lengths = [4, 1, 3, 0]
    emissions = torch.randn(4, 4, 3)
    mask = torch.arange(4).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    tags = torch.randint(0, 3, (4, 4))
    nll = crf.nll(emissions, tags, mask)
    best = crf.decode(emissions, mask)
    for row, length in enumerate(lengths):
        if length == 0:
            assert nll[row].item() == 0 and best[row].tolist() == [0, 0, 0, 0]
            continue
        log_z, path, score = brute_force(crf, emissions[row], length)
        gold = score(tags[row, :length].tolist())
        assert nll[row].item() == pytest.approx((log_z - gold).item(), abs=1e-5)
        assert best[row, :length].tolist() == path and best[row, length:].eq(0).all()


def test_crf_gradient_flows_and_compact_keeps_order():
    crf = CRF(2)
    emissions = torch.randn(1, 3, 2, requires_grad=True)
    crf.nll(emissions, torch.tensor([[0, 1, 1]]), torch.ones(1, 3, dtype=torch.bool)).sum().backward()
    assert emissions.grad is not None and crf.transitions.grad.abs().sum() > 0
    assert crf.nll(torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0)).tolist() == [0, 0]
    values = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    mask = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 0]])
    kept_values, kept = compact(values, mask)
    assert kept_values[0, :2].tolist() == [11, 13] and kept_values[1].tolist() == [20, 21, 22]
    assert kept.tolist() == [[True, True, False], [True, True, True]]


# ---------------------------------------------------------------- metrics and entities


def test_entities_and_seqeval_metrics():
    assert entities(["old", "towns", "and", "cats"], ["B-LOC", "I-LOC", "O", "B-ANI"]) == [
        {"type": "LOC", "start": 0, "end": 2, "text": "old towns"}, {"type": "ANI", "start": 3, "end": 4, "text": "cats"}]
    assert entities(["a", "b"], ["[PAD]", "O"]) == []  # a converted model's [PAD] class is no entity
    task = TaggingTask.__new__(TaggingTask)
    task.labels = ["O", "B-LOC", "I-LOC"]
    outputs = {"index": torch.tensor([1, 0]), "pred": [[1, 2, 0], [1, 0]], "gold": [[1, 2, 0], [1, 2, 0]]}
    # example 0 (second row): predicted B-LOC O + one truncated token (O) vs gold B-LOC I-LOC O: entity missed
    metrics = task.metrics(outputs)
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(0.5) and metrics["accuracy"] == pytest.approx(5 / 6)


# ---------------------------------------------------------------- end to end through the CLI


def sentence(rng):
    tokens, labels = [], []
    for _ in range(rng.randint(3, 9)):
        r = rng.random()
        if r < 0.2:
            tokens.append(rng.choice(ANIMALS))
            labels.append("B-ANI")
        elif r < 0.3:
            tokens += ["old", "towns"]
            labels += ["B-LOC", "I-LOC"]
        else:
            tokens.append(rng.choice(WORDS))
            labels.append("O")
    return tokens, labels


def write_split(path, count, seed):
    rng = random.Random(seed)
    lines = ["text_a\tlabel"] + ["\t".join(" ".join(x) for x in sentence(rng)) for _ in range(count)]
    return write(path, "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny random-init BERT fine-tuned for 3 epochs on synthetic animal/place tags."""
    from tests.train.data_helpers import tiny_bert_config

    root = tmp_path_factory.mktemp("tag")
    files = {name: write_split(root / f"{name}.tsv", n, seed) for name, n, seed in
             (("train", 64, 1), ("dev", 16, 2), ("test", 16, 3))}
    config = tiny_bert_config(root / "tiny.yaml")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["finetune", "--task", "tagging", "--config", str(config), "--vocab", str(write_vocab(root / "v.txt")),
                     "--train", str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]),
                     "--out", str(root / "ft"), "--epochs", "3", "--batch-size", "8", "--lr", "1e-2",
                     "train.progress=false", "train.tensorboard=false"])
    assert code == 0, err.getvalue()
    return root, files


def test_finetune_predict_evaluate(tuned, capsys):
    from seqeval.metrics import f1_score

    root, files = tuned
    model = root / "ft" / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["task"]["name"] == "tagging" and config["task"]["labels"] == ["O", "B-ANI", "B-LOC", "I-LOC"]
    assert [t["type"] for t in config["model"]["targets"]] == ["tagger"]
    summary = json.loads((root / "ft" / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "f1" and 0 <= summary["test/f1"] <= 1
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(root / "p.jsonl")]) == 0
    predictions = [json.loads(line) for line in (root / "p.jsonl").read_text().splitlines()]
    rows = read_tag_rows(files["test"], True)
    assert [p["tokens"] for p in predictions] == [r.tokens for r in rows]
    assert all(len(p["labels"]) == len(p["tokens"]) and p["truncated"] == 0 for p in predictions)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["f1"] == pytest.approx(f1_score([r.labels for r in rows], [p["labels"] for p in predictions]))
    assert set(metrics) == {"f1", "precision", "recall", "accuracy", "examples"}


def test_predict_keeps_one_label_per_token_when_truncated(tuned, tmp_path):
    root, _ = tuned
    long = write(tmp_path / "long.jsonl", json.dumps({"tokens": ["cats"] * 80}) + "\n")
    assert main(["predict", "--model", str(root / "ft" / "model"), "--input", str(long),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(record["labels"]) == 80 and record["truncated"] == 80 - 15  # 32 pieces - CLS/SEP = 15 tokens
    assert record["labels"][15:] == ["O"] * 65


def test_crf_finetunes_and_its_hf_export_is_refused(tuned, tmp_path, capsys):
    root, files = tuned
    from tests.train.data_helpers import tiny_bert_config

    assert main(["finetune", "--task", "tagging", "--config", str(tiny_bert_config(tmp_path / "t.yaml")),
                 "--vocab", str(root / "v.txt"), "--train", str(files["train"]), "--dev", str(files["dev"]),
                 "--out", str(tmp_path / "crf"), "--epochs", "1", "--batch-size", "8", "task.crf=true",
                 "train.progress=false", "train.tensorboard=false"]) == 0
    config = json.loads((tmp_path / "crf" / "model" / "config.json").read_text())
    assert config["model"]["targets"][0]["crf"] is True
    assert main(["evaluate", "--model", str(tmp_path / "crf" / "model"), "--input", str(files["dev"])]) == 0
    capsys.readouterr()
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(tmp_path / "crf" / "model"),
                 str(tmp_path / "hf")]) == 2
    assert "the tagger has a CRF layer" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_hf_token_classification_pipeline_matches_predict(tuned):
    transformers = pytest.importorskip("transformers")
    root, files = tuned
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(root / "ft" / "model"), str(root / "hf")]) == 0
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForTokenClassification"]
    assert hf_config["id2label"] == {"0": "O", "1": "B-ANI", "2": "B-LOC", "3": "I-LOC"}
    tag = transformers.pipeline("token-classification", model=str(root / "hf"), device="cpu", ignore_labels=[])
    assert main(["predict", "--model", str(root / "ft" / "model"), "--input", str(files["test"]),
                 "--out", str(root / "q.jsonl")]) == 0
    ours = [json.loads(line) for line in (root / "q.jsonl").read_text().splitlines()]
    for record in ours:
        pieces = tag(" ".join(record["tokens"]))
        assert [p["entity"] for p in pieces if not p["word"].startswith("##")] == record["labels"]
