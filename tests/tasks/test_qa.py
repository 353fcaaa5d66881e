"""The qa task: CMRC2018 metrics on hand-checked examples, reading and its errors, windows and labels, decoding,
and finetune -> predict -> evaluate end to end on tiny synthetic data."""

from __future__ import annotations

import json
import random

import pytest
import torch

from modaloom.cli.main import main
from modaloom.errors import DataError
from modaloom.tasks.cmrc_metrics import (
    cmrc_scores,
    exact_match,
    f1_score,
    longest_common_substring,
    mixed_segments,
)
from modaloom.tasks.qa import (
    answer_tokens,
    decode_tencentpretrain,
    decode_windows,
    encode_with_offsets,
    window_starts,
)
from modaloom.tasks.qa_io import locate, read_questions
from tests.train.data_helpers import WORDS, tiny_bert_config, write_vocab

# ---------------------------------------------------------------- metrics (values worked out by hand)


def test_segments_cjk_chars_and_words_punctuation_dropped():
    assert mixed_segments("iPhone 6s发布，2015年") == ["iphone", "6s", "发", "布", "2015", "年"]
    assert mixed_segments("A-B c") == ["ab", "c"]  # a skipped punctuation character does not end the word
    assert mixed_segments("《红楼梦》") == ["红", "楼", "梦"]


def test_exact_match_ignores_case_surrounding_space_and_punctuation():
    assert exact_match("北京。", ["上海", " 北京 "]) == 1.0
    assert exact_match("IPHONE", ["iphone"]) == 1.0
    assert exact_match("北京大学", ["北京"]) == 0.0
    assert exact_match("", ["北京"]) == 0.0


def test_f1_is_longest_common_substring_max_over_golds():
    assert f1_score("北京大学", ["北京"]) == pytest.approx(2 / 3)  # P 2/4, R 2/2
    assert f1_score("北大京", ["北京"]) == pytest.approx(0.4)  # a substring, not a subsequence: 1 common; P 1/3, R 1/2
    assert f1_score("iphone 6s", ["iPhone 6s发布"]) == pytest.approx(2 / 3)  # P 2/2, R 2/4
    assert f1_score("北京大学", ["上海", "北京大学。"]) == 1.0
    assert f1_score("", ["北京"]) == 0.0 and f1_score("上海", ["北京"]) == 0.0
    assert longest_common_substring("abcde", "xbcdy") == 3


def test_scores_are_percent_means_over_questions():
    scores = cmrc_scores(["北京", "北京大学", "上海"], [["北京"], ["北京"], ["广州"]])
    assert scores["em"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert scores["average"] == pytest.approx((scores["em"] + scores["f1"]) / 2) and scores["questions"] == 3


# ---------------------------------------------------------------- reading


def cmrc(paragraphs):
    return {"version": "v1.0", "data": [{"id": "D0", "paragraphs": paragraphs}]}


def write_json(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def test_cmrc_json_and_jsonl_read_with_located_answers(tmp_path):
    path = write_json(tmp_path / "a.json", cmrc([{"context": "the cat sat on a mat", "qas": [
        {"id": "q1", "question": "who sat", "answers": [{"text": "cat", "answer_start": 4}]},
        {"id": "q2", "question": "on what", "answers": [{"text": "mat", "answer_start": 3}]}]}]))
    found = read_questions(path, "train")
    assert [(q.id, q.answers) for q in found.items] == [("q1", [("cat", 4)]), ("q2", [("mat", 17)])]
    assert found.realigned == 1  # q2's answer_start did not point at "mat": moved and counted
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"id": "x", "question": "who", "context": "a cat and a cat", "answers": ["cat"]}\n'
                     '{"question": "what", "context": "dogs ran"}\n', encoding="utf-8")
    found = read_questions(lines, "predict")
    assert [(q.id, q.answers) for q in found.items] == [("x", [("cat", 2)]), ("2", [])]
    assert locate("a cat and a cat", "cat", 12) == (12, False) and locate("a cat and a cat", "cat", 9) == (12, True)


@pytest.mark.parametrize("name, text, need, message", [
    ("m.json", '{"data": [\n{"paragraphs": [}', "train", r"m.json:2:\d+: malformed JSON"),
    ("q.json", cmrc([{"context": "c", "qas": [{"id": "q", "answers": []}]}]), "train",
     r"data\[0\].paragraphs\[0\].qas\[0\] \(id q\): no string field 'question'"),
    ("e.json", cmrc([{"context": "  ", "qas": []}]), "train", r"data\[0\].paragraphs\[0\]: empty context"),
    ("n.json", cmrc([{"context": "the cat", "qas": [{"id": "q", "question": "w", "answers": [
        {"text": "dog", "answer_start": 0}]}]}]), "train", r"\(id q\): no answer occurs in the context \('dog'\)"),
    ("a.json", cmrc([{"context": "the cat", "qas": [{"id": "q", "question": "w", "answers": []}]}]), "eval",
     r"\(id q\): no answers"),
    ("d.json", cmrc([{"context": "the cat", "qas": [{"id": "q", "question": "w"}, {"id": "q", "question": "v"}]}]),
     "predict", r"qas\[1\] \(id q\): question id 'q' repeats"),
    ("b.jsonl", '{"question": "w", "context": "c"}\n\n', "predict", r"b.jsonl:2: empty line"),
    ("c.jsonl", '{"question": "w", "context": ""}\n', "predict", r"c.jsonl:1: empty context"),
    ("s.jsonl", '{"question": "w", "context": "a b", "answers": [{"text": "a", "answer_start": "0"}]}\n', "eval",
     r"s.jsonl:1 answers\[0\]: answer_start must be an integer"),
])
def test_bad_files_name_file_and_position(tmp_path, name, text, need, message):
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        write_json(path, text)
    with pytest.raises(DataError, match=message):
        read_questions(path, need)


def test_cmrc2018_dev_loads_as_is():
    from tests.data.text_fixtures import shared_or_skip

    found = read_questions(shared_or_skip("datasets/cmrc2018/dev.json"), "train")
    assert len(found.items) == 3219 and found.items[0].id == "DEV_0_QUERY_0"
    assert len(read_questions(shared_or_skip("datasets/cmrc2018/test.json"), "predict").items) == 2000


# ---------------------------------------------------------------- windows, labels, decoding


def test_window_starts_cover_every_token_with_the_stride():
    assert window_starts(5, 10, 3) == [0]
    assert window_starts(10, 4, 3) == [0, 3, 6]  # last window 6..9
    assert window_starts(10, 4, 9) == [0, 4, 8]  # the stride never exceeds the room: no token skipped


def test_answer_tokens_from_character_offsets():
    offsets = [(0, 3), (4, 7), (8, 11), (12, 14)]
    assert answer_tokens(offsets, 4, 11) == (1, 2)
    assert answer_tokens(offsets, 5, 6) == (1, 1)  # inside a token: that token
    assert answer_tokens(offsets, 20, 22) is None


def test_char_tokenization_keeps_every_character(tmp_path):
    from modaloom.data.tokenizers import load_tokenizer

    vocab = tmp_path / "v.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n北\n京\n", encoding="utf-8")
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    [(ids, offsets)] = encode_with_offsets(tok, ["北 京x"], "char")
    assert ids == [4, 1, 5, 1] and offsets == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_decode_best_span_vs_greedy_and_max_length():
    context = torch.tensor([[False, False, True, True, True, True]])
    logits = torch.full((1, 6, 2), -5.0)
    logits[0, 2, 0], logits[0, 3, 0] = 3.0, 2.9  # start: 2 slightly better than 3
    logits[0, 1, 1], logits[0, 3, 1] = 9.0, 1.0  # end: 1 is no context token; 3 the best allowed
    logits[0, 2, 1] = -9.0
    rank, score, start, end = decode_windows(logits, context, max_length=30)
    assert (start.item(), end.item()) == (2, 3) and score.item() == pytest.approx(rank.item())
    _, _, start, end = decode_windows(logits, context, max_length=1)  # one token: start == end
    assert start.item() == end.item()
    logits[0, 4, 0], logits[0, 4, 1] = 2.95, 2.0  # within 2 tokens (4, 4) is the best pair; greedy starts at 2
    _, _, start, end = decode_windows(logits, context, max_length=2)
    assert (start.item(), end.item()) == (4, 4)
    rank, score, start, end = decode_windows(logits, context, max_length=2, greedy=True)
    assert (start.item(), end.item()) == (2, 3)
    probabilities = logits[0, [0, 2, 3, 4, 5]].softmax(0)  # greedy ranks by p_start + p_end, softmax over
    # [CLS] and the context tokens
    assert rank.item() == pytest.approx((probabilities[1, 0] + probabilities[2, 1]).item(), rel=1e-5)
    rank, _, start, _ = decode_windows(logits, torch.zeros_like(context), max_length=30)
    assert start.item() == -1 and rank.item() == float("-inf")


def test_decode_tencentpretrain_follows_run_cmrc_get_answers():
    logits = torch.zeros((2, 6, 2))
    logits[0, 1, 0] = 9.0  # a question position: never a start (the context starts at 3)
    logits[0, 4, 0], logits[0, 5, 1], logits[0, 3, 1] = 2.0, 1.5, 3.0  # end 3 lies before the start: not taken
    logits[1, 5, 0], logits[1, 5, 1] = 1.0, 1.0  # padding / [SEP] positions may be chosen, as run_cmrc does
    rank, score, start, end = decode_tencentpretrain(logits, torch.tensor([3, 3]))
    assert start.tolist() == [4, 5] and end.tolist() == [5, 5]
    p_start, p_end = logits[0, :, 0].softmax(0), logits[0, :, 1].softmax(0)  # over every position
    assert rank[0].item() == pytest.approx((p_start[4] + p_end[5]).item())
    assert score[0].item() == pytest.approx((p_start[4] * p_end[5]).item())


def test_decoding_tencentpretrain_needs_char_tokenization():
    from modaloom.errors import ConfigError
    from modaloom.tasks.qa import qa_options

    with pytest.raises(ConfigError, match="needs task.tokenization=char"):
        qa_options({"decoding": "tencentpretrain"})
    with pytest.raises(ConfigError, match="task.doc_stride must be >= 1, got 0"):
        qa_options({"doc_stride": 0})
    assert qa_options({"decoding": "tencentpretrain", "tokenization": "char"}).decoding == "tencentpretrain"


# ---------------------------------------------------------------- end to end


def synthetic_questions(count, seed):
    """Questions whose answer is the word after "near" in a longish context of WORDS."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w != "near"]
    out = []
    for i in range(count):
        left = " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))
        answer = rng.choice(words)
        context = f"{left} near {answer} " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))
        out.append({"id": f"q{i}", "question": "what is near", "context": context,
                    "answers": [{"text": answer, "answer_start": len(left) + 6}]})
    return out


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    vocab = write_vocab(root / "vocab.txt")
    config = tiny_bert_config(root / "tiny.yaml", vocab_size=0)
    files = {}
    for name, count, seed in (("train", 32, 0), ("dev", 8, 1)):
        files[name] = write_json(root / f"{name}.json", cmrc([{"context": q.pop("context"), "qas": [q]}
                                                               for q in synthetic_questions(count, seed)]))
    files["test"] = root / "test.jsonl"
    files["test"].write_text("".join(json.dumps(q) + "\n" for q in synthetic_questions(10, 2)), encoding="utf-8")
    code = main(["finetune", "--task", "qa", "--config", str(config), "--vocab", str(vocab), "--train",
                 str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]), "--out",
                 str(root / "out"), "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--seq-length", "24",
                 "task.doc_stride=8", "task.max_answer_length=4", "train.progress=false", "train.threads=1"])
    assert code == 0
    return root, files


def test_finetune_predict_evaluate(qa_run, capsys):
    root, files = qa_run
    model = root / "out" / "model"
    section = json.loads((model / "config.json").read_text())["task"]
    assert section["name"] == "qa" and section["options"]["doc_stride"] == 8
    assert section["counts"]["train"]["windows"] > section["counts"]["train"]["questions"] == 32  # windows used
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "f1" and 0 <= summary["test/f1"] <= 100
    out = root / "p.jsonl"
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    contexts = [json.loads(line)["context"] for line in files["test"].read_text().splitlines()]
    assert [r["id"] for r in records] == [f"q{i}" for i in range(10)]  # one per question, in input order
    assert all(r["answer"] in c and 0 <= r["score"] <= 1 for r, c in zip(records, contexts, strict=True))
    assert "10 predictions written" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["questions"] == 10 and metrics["f1"] == pytest.approx(summary["test/f1"])


def test_evaluate_refuses_a_file_without_answers(qa_run, tmp_path, capsys):
    root, _ = qa_run
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"id": "a", "question": "what is near", "context": "the cat near a mat"}\n', encoding="utf-8")
    assert main(["evaluate", "--model", str(root / "out" / "model"), "--input", str(bare)]) == 2
    assert "bare.jsonl has no labels" in capsys.readouterr().err


def test_span_loss_is_the_mean_of_start_and_end_cross_entropy_without_padding():
    from modaloom.targets.span import span_loss

    logits = torch.randn(2, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    starts, ends = torch.tensor([1, 0]), torch.tensor([3, 2])
    ce = torch.nn.functional.cross_entropy
    expected_second = (ce(logits[1:, :3, 0], starts[1:]) + ce(logits[1:, :3, 1], ends[1:])) / 2
    expected_first = (ce(logits[:1, :, 0], starts[:1]) + ce(logits[:1, :, 1], ends[:1])) / 2
    assert span_loss(logits, mask, starts, ends).item() == pytest.approx(((expected_first + expected_second) / 2).item(),
                                                                         rel=1e-5)
