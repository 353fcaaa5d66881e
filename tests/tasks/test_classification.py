"""The classification task: reading, labels, truncation, losses, and the finetune/predict/evaluate/features/
convert verbs end to end on a tiny BERT pre-trained here for a few steps."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from modaloom.cli.main import main
from modaloom.errors import DataError
from modaloom.losses import build_loss
from modaloom.tasks.classification import sort_labels
from modaloom.tasks.text_io import encode_pairs, read_rows, truncate_longest_first
from tests.train.data_helpers import WORDS, tiny_bert_config, write_dataset

# ---------------------------------------------------------------- reading


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_and_jsonl_rows_single_and_pairs(tmp_path):
    tsv = read_rows(write(tmp_path / "a.tsv", "label\ttext_a\ttext_b\n1\tthe cat\ta dog\n0\told books\train\n"), True)
    assert [(r.label, r.text_a, r.text_b, r.where) for r in tsv] == [
        ("1", "the cat", "a dog", f"{tmp_path / 'a.tsv'}:2"), ("0", "old books", "rain", f"{tmp_path / 'a.tsv'}:3")]
    jsonl = read_rows(write(tmp_path / "a.jsonl", '{"label": 1, "text_a": "x"}\n{"text_a": "y", "text_b": "z"}\n'),
                      False)
    assert [(r.label, r.text_a, r.text_b) for r in jsonl] == [(1, "x", None), (None, "y", "z")]
    nolabel = read_rows(write(tmp_path / "n.tsv", "text_a\nthe cat\n"), False)
    assert nolabel[0].label is None


@pytest.mark.parametrize("name, text, message", [
    ("e.tsv", "label\ttext_a\n1\tthe cat\n\n0\tdog\n", r"e.tsv:3: empty line"),
    ("m.tsv", "label\ttext_a\ttext_b\n1\tthe cat\n", r"m.tsv:2: 2 tab-separated field\(s\), the header names 3"),
    ("h.tsv", "label\tsentence\n1\tx\n", r"h.tsv:1: header .* has no column text_a"),
    ("l.tsv", "text_a\nthe cat\n", r"l.tsv:1: header .* has no column label"),
    ("j.jsonl", '{"label": 1, "text_a": "x"}\n{"label": 1, "text_a": "x"\n', r"j.jsonl:2: malformed JSON"),
    ("k.jsonl", '{"label": 1, "text": "x"}\n', r"k.jsonl:1: no string field text_a"),
    ("n.jsonl", '{"text_a": "x"}\n', r"n.jsonl:1: no field label"),
    ("z.tsv", "label\ttext_a\n", r"z.tsv: no examples"),
])
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_rows(write(tmp_path / name, text), need_label=True)


def test_book_review_loads_as_is():
    from tests.data.text_fixtures import shared_or_skip

    rows = read_rows(shared_or_skip("datasets/book_review/dev.tsv"), need_label=True)
    assert len(rows) == 8000 and {r.label for r in rows} == {"0", "1"}
    assert read_rows(shared_or_skip("datasets/book_review/test_nolabel.tsv"), need_label=False)[0].label is None


# ---------------------------------------------------------------- truncation and labels


def test_truncation_is_longest_first_from_the_end():
    assert truncate_longest_first([1, 2, 3, 4, 5], [6, 7, 8], 6) == ([1, 2, 3], [6, 7, 8])
    assert truncate_longest_first([1, 2, 3], [4, 5, 6, 7, 8, 9], 6) == ([1, 2, 3], [4, 5, 6])
    assert truncate_longest_first([1, 2, 3, 4], [5, 6, 7, 8], 6) == ([1, 2, 3], [5, 6, 7])  # tie: a first
    assert truncate_longest_first([1, 2], [3], 6) == ([1, 2], [3])


def test_encode_pairs_layout_and_truncation_count(tmp_path):
    from modaloom.data.tokenizers import load_tokenizer
    from tests.train.data_helpers import write_vocab

    tok = load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path / "v.txt"))})
    rows = read_rows(write(tmp_path / "p.tsv", "label\ttext_a\ttext_b\n1\tthe cat sat on a mat\tdogs ran\n"
                                               "0\tthe cat\tdogs\n"), True)
    enc = encode_pairs(tok, rows, seq_length=7)
    cls, sep = tok.special_id("cls"), tok.special_id("sep")
    first = enc.input_ids[0]
    assert len(first) == 7 and first[0] == cls and first.count(sep) == 2 and enc.truncated == 1
    assert tok.decode(first[1:3]) == "the cat" and enc.segment_ids[0] == [0, 0, 0, 0, 1, 1, 1]
    assert enc.input_ids[1] == [cls, *tok.encode("the cat"), sep, *tok.encode("dogs"), sep]


def test_labels_sort_numerically_when_they_are_integers():
    assert sort_labels({"10", "2", "1"}) == ["1", "2", "10"]
    assert sort_labels({"pos", "neg", "10"}) == ["10", "neg", "pos"]


def test_registered_multi_label_and_regression_losses():
    logits, labels = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    from types import SimpleNamespace

    section = SimpleNamespace(label="cls")
    bce = build_loss(section, "bce")
    assert torch.allclose(bce(logits, labels), torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))
    mse = build_loss(section, "mse")
    assert mse(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 3.0])).item() == pytest.approx(0.5)


# ---------------------------------------------------------------- end to end through the CLI


def label_of(text: str) -> str:
    return "1" if "cat" in text.split() else "0"


def write_split(path, count, seed, pairs=False, header="label\ttext_a"):
    rng = random.Random(seed)
    lines = [header + ("\ttext_b" if pairs else "")]
    for _ in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        lines.append(f"{label_of(text)}\t{text}" + ("\tdogs ran" if pairs else ""))
    return write(path, "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny BERT pre-trained for 4 steps, then fine-tuned for 2 epochs on the cat/no-cat task."""
    root = tmp_path_factory.mktemp("cls")
    data = write_dataset(root / "bert_data")
    config = tiny_bert_config(root / "tiny.yaml", vocab_size=38)
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(root / "pre"),
                 "--steps", "4"]) == 0
    files = {name: write_split(root / f"{name}.tsv", n, seed) for name, n, seed in
             (("train", 48, 1), ("dev", 16, 2), ("test", 16, 3))}
    return root, files


def finetune(root, files, out, *extra, model=None):
    source = ["--model", str(model or root / "pre" / "model")] if "--config" not in extra else []
    return main(["finetune", "--task", "classification", *source, "--train", str(files["train"]),
                 "--dev", str(files["dev"]), "--out", str(out), "--batch-size", "8", "--lr", "1e-3",
                 *extra, "train.progress=false", "train.tensorboard=false"])  # flags first, overrides last


@pytest.fixture(scope="module")
def tuned(run):
    root, files = run
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = finetune(root, files, root / "ft", "--epochs", "2", "--test", str(files["test"]))
    assert code == 0, err.getvalue()
    return root, files, root / "ft", err.getvalue()


def test_finetune_exports_best_model_with_task_labels_and_tokenizer(tuned):
    root, files, out, stderr = tuned
    # every key the pre-trained folder and the new model do not share is listed
    assert "targets.cls.output.weight" in stderr and "targets.mlm" in stderr and "targets.sp" in stderr
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["task"]["name"] == "classification" and config["task"]["labels"] == ["0", "1"]
    assert config["task"]["options"]["kind"] == "single"
    assert [t["type"] for t in config["model"]["targets"]] == ["cls"]
    assert (out / "model" / "tokenizer" / "modaloom_tokenizer.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["best_dev"]["metric"] == "accuracy"
    assert 0 <= summary["test/accuracy"] <= 1 and "test/macro_f1" in summary
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["step"] == summary["best_dev"]["step"] and best["step"] in (6, 12)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "eval/accuracy" in r] == [6, 12]


def test_predict_evaluate_features(tuned, capsys):
    root, files, out, _ = tuned
    model = out / "model"
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(root / "p.jsonl")]) == 0
    predictions = [json.loads(line) for line in (root / "p.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and all(p["label"] in ("0", "1") for p in predictions)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    gold = [line.split("\t")[0] for line in files["test"].read_text().splitlines()[1:]]
    assert metrics["accuracy"] == pytest.approx(np.mean([p["label"] == g for p, g in zip(predictions, gold)]))
    assert "accuracy" in captured.err and "macro_f1" in captured.err
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"]), "--out", str(root / "m.json")]) == 0
    assert json.loads((root / "m.json").read_text()) == metrics
    before = files["test"].read_bytes()
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"]), "--out", str(files["test"])]) == 2
    assert "is the input" in capsys.readouterr().err and files["test"].read_bytes() == before
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"]), "--out",
                 str(model / "m.json")]) == 2
    assert "inside the input folder" in capsys.readouterr().err and not (model / "m.json").exists()
    sentences = write(root / "s.txt", "the cat sat\nold books near warm fires\n")
    for pooling in ("first", "mean", "max", "last"):
        assert main(["features", "--model", str(model), "--input", str(sentences), "--pooling", pooling,
                     "--normalize", "--out", str(root / f"{pooling}.npy")]) == 0
        vectors = np.load(root / f"{pooling}.npy")
        assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert not np.allclose(np.load(root / "first.npy"), np.load(root / "mean.npy"))


def test_predict_refuses_pretrained_or_other_task_models(tuned, capsys):
    root, files, out, _ = tuned
    assert main(["predict", "--model", str(root / "pre" / "model"), "--input", str(files["test"]),
                 "--out", str(root / "x.jsonl")]) == 2
    assert "is not a fine-tuned model" in capsys.readouterr().err
    assert main(["predict", "--model", str(out / "model"), "--task", "tagging", "--input", str(files["test"]),
                 "--out", str(root / "x.jsonl")]) == 2
    assert "fine-tuned for task 'classification', not 'tagging'" in capsys.readouterr().err
    assert not (root / "x.jsonl").exists()


def test_unknown_dev_or_predict_label_names_file_and_line(run, tmp_path, capsys):
    root, files = run
    dev = write(tmp_path / "dev.tsv", "label\ttext_a\n1\tthe cat\n7\tdogs\n")
    code = finetune(root, {**files, "dev": dev}, tmp_path / "out", "--epochs", "1")
    assert code == 2 and f"{dev}:3: label '7' is not in the label set of the training file (0, 1)" in \
        capsys.readouterr().err
    assert not (tmp_path / "out" / "model").exists()


def test_multi_label_and_regression_kinds(run, tmp_path, capsys):
    root, files = run
    rng = random.Random(5)
    lines, values = ["label\ttext_a"], ["label\ttext_a"]
    for _ in range(32):
        text = " ".join(rng.choice(WORDS) for _ in range(5))
        tags = [t for t in ("cat", "dogs") if t in text.split()] or ["none"]
        lines.append(f"{'|'.join(tags)}\t{text}")
        values.append(f"{len(text.split()[0]) / 3:.3f}\t{text}")
    multi = write(tmp_path / "m.tsv", "\n".join(lines) + "\n")
    assert finetune(root, {"train": multi, "dev": multi}, tmp_path / "m", "--epochs", "1", "task.kind=multi_label",
                    "task.label_separator=|") == 0
    task = json.loads((tmp_path / "m" / "model" / "config.json").read_text())["task"]
    assert task["options"]["kind"] == "multi_label" and set(task["labels"]) <= {"cat", "dogs", "none"}
    assert main(["predict", "--model", str(tmp_path / "m" / "model"), "--input", str(multi),
                 "--out", str(tmp_path / "m.jsonl")]) == 0
    first = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert set(first) == {"labels", "probabilities"} and set(first["probabilities"]) == set(task["labels"])
    reg = write(tmp_path / "r.tsv", "\n".join(values) + "\n")
    assert finetune(root, {"train": reg, "dev": reg}, tmp_path / "r", "--epochs", "1", "task.kind=regression") == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "r" / "model"), "--input", str(reg)]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"pearson", "spearman", "mse", "examples"}
    bad = write(tmp_path / "bad.tsv", "label\ttext_a\nhigh\tthe cat\n")
    assert finetune(root, {"train": bad, "dev": bad}, tmp_path / "b", "task.kind=regression") == 2
    assert f"{bad}:2: label 'high' is not a number" in capsys.readouterr().err


def test_random_init_from_config_needs_a_vocabulary(run, tmp_path, capsys):
    root, files = run
    config = tiny_bert_config(tmp_path / "tiny.yaml", vocab_size=38)
    assert finetune(root, files, tmp_path / "a", "--config", str(config)) == 2
    assert "no tokenizer" in capsys.readouterr().err
    vocab = root / "pre" / "model" / "tokenizer" / "vocab-bert_data.txt"
    assert finetune(root, files, tmp_path / "b", "--config", str(config), "--vocab", str(vocab), "--epochs", "1") == 0
    assert "weights from" not in capsys.readouterr().err  # nothing loaded: a new model


def test_pairs_are_fine_tuned_and_predicted(run, tmp_path):
    root, _ = run
    files = {"train": write_split(tmp_path / "t.tsv", 24, 1, pairs=True),
             "dev": write_split(tmp_path / "d.tsv", 8, 2, pairs=True)}
    assert finetune(root, files, tmp_path / "o", "--epochs", "1") == 0
    assert main(["predict", "--model", str(tmp_path / "o" / "model"), "--input", str(files["dev"]),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 8


def test_hf_export_pipeline_matches_predict_and_fill_mask_has_tokens(tuned, capsys):
    transformers = pytest.importorskip("transformers")
    root, files, out, _ = tuned
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(out / "model"), str(root / "hf")]) == 0
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "0", "1": "1"} and hf_config["label2id"] == {"0": 0, "1": 1}
    classify = transformers.pipeline("text-classification", model=str(root / "hf"), device="cpu")
    texts = [line.split("\t")[1] for line in files["test"].read_text().splitlines()[1:]]
    assert main(["predict", "--model", str(out / "model"), "--input", str(files["test"]),
                 "--out", str(root / "q.jsonl")]) == 0
    ours = [json.loads(line) for line in (root / "q.jsonl").read_text().splitlines()]
    theirs = classify(texts)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    assert [t["score"] for t in theirs] == pytest.approx([o["probabilities"][o["label"]] for o in ours], abs=1e-4)
    # the pre-trained BERT: fill-mask answers with real tokens of the vocabulary
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(root / "pre" / "model"), str(root / "mlm")]) == 0
    fill = transformers.pipeline("fill-mask", model=str(root / "mlm"), device="cpu")
    answers = fill("the cat [MASK] on a mat")
    vocab = set((root / "mlm" / "vocab.txt").read_text().split())
    assert answers and all(a["token_str"].strip() and a["token_str"].strip() in vocab for a in answers)


def test_unicode_line_separators_inside_texts_stay_in_their_line(tmp_path):
    text = "fine\u2028film \x85 and\u2029more"
    path = write(tmp_path / "u.jsonl", json.dumps({"label": "1", "text_a": text}, ensure_ascii=False) + "\n")
    assert [r.text_a for r in read_rows(path, True)] == [text]
    tsv = write(tmp_path / "u.tsv", f"label\ttext_a\r\n1\t{text}\r\n")
    assert [(r.label, r.text_a) for r in read_rows(tsv, True)] == [("1", text)]


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    from types import SimpleNamespace

    from modaloom.tasks.finetune import check_vocabulary

    cfg = SimpleNamespace(model=SimpleNamespace(embedding=SimpleNamespace(vocab_size=30)))
    with pytest.raises(DataError, match="tokenizer v.txt has 38 tokens but the model's embedding has 30 rows"):
        check_vocabulary(cfg, SimpleNamespace(vocab_size=38), "v.txt")
    cfg.model.embedding.vocab_size = 0
    check_vocabulary(cfg, SimpleNamespace(vocab_size=38), "v.txt")
    assert cfg.model.embedding.vocab_size == 38


def test_hf_export_refuses_a_head_hf_cannot_express(run, tmp_path, capsys):
    root, files = run
    assert finetune(root, files, tmp_path / "o", "--epochs", "1", "task.pooling=mean", "task.pooler=false") == 0
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(tmp_path / "o" / "model"), str(tmp_path / "hf")]) == 2
    assert "pools with 'mean' without a pooler" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_unknown_task_option_or_non_finetuning_task_is_refused(run, tmp_path, capsys):
    root, files = run
    assert finetune(root, files, tmp_path / "o", "task.knd=single") == 2
    assert "knd" in capsys.readouterr().err
    assert main(["finetune", "--task", "pretrain", "--model", str(root / "pre" / "model"), "--train",
                 str(files["train"]), "--dev", str(files["dev"]), "--out", str(tmp_path / "p")]) == 2
    assert "not a fine-tuning task" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_best_dev_keeps_the_best_value_and_restores_it():
    from modaloom.tasks.finetune import BestDev

    best = BestDev()
    best.step = 5
    assert best.improved(0.6, True) and not best.improved(0.5, True) and not best.improved(float("nan"), True)
    best.step = 10
    assert best.improved(0.7, True) and best.state_dict() == {"best": 0.7, "step": 10}
    other = BestDev()
    other.load_state_dict(best.state_dict())
    assert (other.best, other.best_step) == (0.7, 10) and not other.improved(0.69, True)
    low = BestDev()
    assert low.improved(0.5, False) and low.improved(0.4, False) and not low.improved(0.45, False)
