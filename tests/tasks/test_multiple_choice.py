"""The multiple_choice task: C3 JSON and JSONL reading and its errors, the run_c3 input layout and truncation,
masked choices, and finetune -> predict -> evaluate end to end on tiny synthetic data."""

from __future__ import annotations

import json
import random

import pytest
import torch

from modaloom.cli.main import main
from modaloom.errors import DataError
from modaloom.tasks.multiple_choice import ChoiceLoader, fit_parts, read_choice_questions
from tests.train.data_helpers import WORDS, tiny_bert_config, write_vocab


def write(path, value):
    path.write_text(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def test_c3_and_jsonl_read(tmp_path):
    c3 = write(tmp_path / "c3.json", [[["男：你好", "女：再见"], [
        {"question": "谁?", "choice": ["男", "女", "狗"], "answer": "女"},
        {"question": "何?", "choice": ["a", "b"], "answer": "a", "id": 7}], "d1"]])
    found = read_choice_questions(c3, need_answer=True)
    assert [(q.id, q.context, q.choices, q.answer) for q in found] == [
        ("d1-0", "男：你好\n女：再见", ["男", "女", "狗"], 1), ("7", "男：你好\n女：再见", ["a", "b"], 0)]
    lines = write(tmp_path / "m.jsonl", '{"context": "c", "question": "q", "choices": ["x", "y"], "answer": "y"}\n'
                                        '{"context": "c", "question": "q", "choices": ["x", "y"], "id": "z"}\n')
    found = read_choice_questions(lines, need_answer=False)
    assert [(q.id, q.answer) for q in found] == [("1", 1), ("z", None)]


@pytest.mark.parametrize("name, text, message", [
    ("a.json", [[["c"], [{"question": "q", "choice": ["x", "y"], "answer": "z"}], "d"]],
     r"a.json: \[0\]\[1\]\[0\] \(id d-0\): answer 'z' is not among the choices"),
    ("b.jsonl", '{"context": "c", "question": "q", "choices": ["x", "y"], "answer": "x"}\n'
                '{"context": "c", "question": "q", "choices": ["x", "y"], "answer": "w"}\n',
     r"b.jsonl:2: answer 'w' is not among the choices"),
    ("c.json", '[[["c"], [{"question": "q",\n "choice": ]]]', r"c.json:2:\d+: malformed JSON"),
    ("d.jsonl", '{"context": "c", "choices": ["x", "y"], "answer": "x"}\n', r"d.jsonl:1: no string field 'question'"),
    ("e.json", [[[""], [{"question": "q", "choice": ["x", "y"], "answer": "x"}]]], r"e.json: \[0\]\[0\]: empty context"),
    ("f.jsonl", '{"context": "c", "question": "q", "choices": ["x"], "answer": "x"}\n',
     r"f.jsonl:1: 'choices' must be a list of at least 2"),
    ("g.jsonl", '{"context": "c", "question": "q", "choices": ["x", "y"]}\n', r"g.jsonl:1: no field 'answer'"),
    ("h.json", {"data": []}, r"h.json: expected a JSON list of C3 documents"),
])
def test_bad_files_name_file_and_position(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_choice_questions(write(tmp_path / name, text), need_answer=True)


def test_c3_dev_loads_as_is_and_test_without_answers():
    from tests.data.text_fixtures import shared_or_skip

    dev = read_choice_questions(shared_or_skip("datasets/c3/dev.json"), need_answer=True)
    assert len(dev) > 3000 and all(q.answer is not None for q in dev)
    test = read_choice_questions(shared_or_skip("datasets/c3/test.json"), need_answer=False)
    assert test[0].id == "508" and test[0].answer is None


def test_fit_parts_cuts_context_then_question_then_choice():
    assert fit_parts([1, 2], [3, 4], [5, 6, 7], 10) == ([1, 2], [3, 4], [5, 6, 7])
    assert fit_parts([1, 2], [3, 4], [5, 6, 7], 5) == ([1, 2], [3, 4], [5])
    assert fit_parts([1, 2], [3, 4], [5, 6, 7], 3) == ([1, 2], [3], [])


def test_layout_and_choice_mask(tmp_path):
    from modaloom.config import load_config
    from modaloom.data.tokenizers import load_tokenizer
    from modaloom.tasks.base import JobPaths
    from modaloom.tasks.multiple_choice import MultipleChoiceTask

    tok = load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path / "v.txt"))})
    data = write(tmp_path / "d.jsonl", '{"context": "the cat sat", "question": "who", "choices": ["dogs", "cat"],'
                                       ' "answer": "cat"}\n{"context": "rain", "question": "what",'
                                       ' "choices": ["rain", "the sun", "books"], "answer": "books"}\n')
    cfg = load_config(str(tiny_bert_config(tmp_path / "c.yaml", vocab_size=tok.vocab_size)), [])
    task = MultipleChoiceTask(cfg, JobPaths(data=data, out=tmp_path / "o"))
    task.tokenizer = tok
    examples = task.examples(data, True, "train")
    ids = [tok.id_to_token(i) for i in examples[0]["input_ids"][1]]
    assert ids == ["[CLS]", "cat", "[SEP]", "[UNK]", "[SEP]", "the", "cat", "sat", "[SEP]"]  # choice, question, context
    assert examples[0]["segment_ids"][1] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    batch = next(iter(ChoiceLoader(examples, 2, tok.special_id("pad"))))
    assert batch["input_ids"].shape[:2] == (2, 3)
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["task_labels"].tolist() == [1, 2]
    from modaloom.batch import count_tokens

    assert count_tokens(batch) == batch["input_ids"].numel()  # throughput counts every choice's tokens
    task.max_choices = 3
    model = type("Scores", (), {"__call__": lambda self, inputs: type("Out", (), {
        "logits": {"cls": inputs["input_ids"][:, 1:2].float()}})()})()
    logits = task.logits(model, batch)
    assert logits[0, 2] == float("-inf") and torch.isfinite(logits[1]).all()


# ---------------------------------------------------------------- end to end


def synthetic(count, seed):
    """The answer is the choice that occurs in the context."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        options = rng.sample(WORDS, 3 + i % 2)
        answer = rng.choice(options)
        context = " ".join(rng.choice([w for w in WORDS if w not in options]) for _ in range(6)) + f" {answer}"
        out.append({"id": f"m{i}", "context": context, "question": "which", "choices": options, "answer": answer})
    return out


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    vocab = write_vocab(root / "vocab.txt")
    config = tiny_bert_config(root / "tiny.yaml", vocab_size=0)
    train = synthetic(32, 0)
    c3 = [[[q["context"]], [{"question": q["question"], "choice": q["choices"], "answer": q["answer"]}], q["id"]]
          for q in train]
    files = {"train": write(root / "train.json", c3), "dev": write(root / "dev.jsonl", "".join(
        json.dumps(q) + "\n" for q in synthetic(8, 1)))}
    files["test"] = write(root / "test.jsonl", "".join(json.dumps(q) + "\n" for q in synthetic(6, 2)))
    code = main(["finetune", "--task", "multiple_choice", "--config", str(config), "--vocab", str(vocab), "--train",
                 str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]), "--out",
                 str(root / "out"), "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--seq-length", "24",
                 "train.progress=false", "train.threads=1"])
    assert code == 0
    return root, files


def test_finetune_predict_evaluate(mc_run, capsys):
    root, files = mc_run
    model = root / "out" / "model"
    assert json.loads((model / "config.json").read_text())["task"]["name"] == "multiple_choice"
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "accuracy" and 0 <= summary["test/accuracy"] <= 1
    out = root / "p.jsonl"
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    questions = synthetic(6, 2)
    assert [r["id"] for r in records] == [q["id"] for q in questions]
    for record, question in zip(records, questions, strict=True):
        assert len(record["probabilities"]) == len(question["choices"])  # 3 or 4: no filler choices
        assert sum(record["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert record["answer"] == question["choices"][record["probabilities"].index(max(record["probabilities"]))]
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["questions"] == 6 and metrics["accuracy"] == pytest.approx(summary["test/accuracy"])


def test_predict_refuses_an_answer_outside_the_choices(mc_run, tmp_path, capsys):
    root, _ = mc_run
    bad = write(tmp_path / "bad.jsonl", '{"context": "c", "question": "q", "choices": ["cat", "dogs"], "answer": "x"}\n')
    assert main(["predict", "--model", str(root / "out" / "model"), "--input", str(bad), "--out",
                 str(tmp_path / "p.jsonl")]) == 2
    assert "bad.jsonl:1: answer 'x' is not among the choices" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
