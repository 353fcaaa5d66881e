"""The text2text task: reading, layout and truncation, metrics, and finetune -> predict -> evaluate -> generate
end to end on tiny random T5-style and GPT-2-style models; the HF export generates what predict writes."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from modaloom.cli.main import main
from modaloom.data.tokenizers import load_tokenizer
from modaloom.errors import DataError
from modaloom.tasks.text2text import Layout, RougeTokenizer, clean_text, read_pairs, text_metrics
from tests.train.data_helpers import WORDS, write_vocab


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading, layout, metrics


def test_tsv_and_jsonl_pairs(tmp_path):
    tsv = read_pairs(write(tmp_path / "a.tsv", "text_a\tlabel\nthe cat\tdogs ran\nold books\train\n"), True)
    assert [(r.text_a, r.label, r.where) for r in tsv] == [("the cat", "dogs ran", f"{tmp_path / 'a.tsv'}:2"),
                                                          ("old books", "rain", f"{tmp_path / 'a.tsv'}:3")]
    jsonl = read_pairs(write(tmp_path / "a.jsonl", '{"source": "x", "target": "y"}\n{"source": "z"}\n'), False)
    assert [(r.text_a, r.label) for r in jsonl] == [("x", "y"), ("z", None)]


@pytest.mark.parametrize("name, text, message", [
    ("e.jsonl", '{"source": "x", "target": "y"}\n\n', r"e.jsonl:2: empty line"),
    ("m.jsonl", '{"source": "x", "target": "y"\n', r"m.jsonl:1: malformed JSON"),
    ("k.jsonl", '{"text": "x", "target": "y"}\n', r"k.jsonl:1: expected an object with a string field source"),
    ("n.jsonl", '{"source": "x"}\n', r"n.jsonl:1: no field target"),
    ("t.jsonl", '{"source": "x", "target": 3}\n', r"t.jsonl:1: target must be a string"),
    ("l.tsv", "text_a\nthe cat\n", r"l.tsv:1: header .* has no column label"),
])
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path / name, text), need_target=True)


def test_layout_frames_and_truncates_with_the_end_kept(tmp_path):
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path / "v.txt"))})
    layout = Layout.of(tok)
    cls, sep, pad = tok.special_id("cls"), tok.special_id("sep"), tok.special_id("pad")
    assert (layout.start, layout.end, layout.pad, layout.decoder_start) == (cls, sep, pad, cls)
    assert layout.source([5, 6], [7], 10) == ([cls, 5, 6, sep, 7, sep], False)
    assert layout.source([5, 6, 7, 8], None, 4) == ([cls, 5, 6, 7], True)
    assert layout.target([5, 6, 7], 3) == ([5, 6, sep], True)
    assert layout.target([5], 3) == ([5, sep], False)
    space = load_tokenizer({"type": "space", "vocab": str(write(tmp_path / "s.txt", "<pad>\n</s>\n<unk>\na\n"))})
    t5_like = Layout.of(space)  # no cls/bos: the source is "text </s>", the decoder starts from the pad id
    assert (t5_like.start, t5_like.end, t5_like.decoder_start) == (None, 1, 0)


def test_metrics_are_sacrebleu_and_rouge_with_cjk_characters_as_tokens():
    import sacrebleu

    hyps, refs = ["the cat sat on the mat", "a dog"], ["the cat sat on a mat", "a dog ran"]
    scores = text_metrics(hyps, refs)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert text_metrics(refs, refs)["rougeL"] == pytest.approx(100.0)
    assert RougeTokenizer().tokenize("我爱 NLP, ok") == ["我", "爱", "nlp", "ok"]
    chinese = text_metrics(["我 爱 北京"], ["我爱北京天安门"])
    assert 0 < chinese["rouge1"] < 100 and chinese["bleu"] > 0  # rouge-score's default tokenizer gives 0
    assert clean_text("我 爱 北 京 and the cat") == "我爱北京 and the cat"


# ---------------------------------------------------------------- end to end through the CLI

SIZES = {"emb_size": 16, "dropout": 0.0}
STACK = {"type": "transformer", "hidden_size": 16, "layers_num": 1, "heads_num": 2, "feedforward_size": 32,
         "dropout": 0.0}


def t5_config(path):
    emb = {"parts": ["word"], "vocab_size": 38, "norm": "none", **SIZES}
    stack = {**STACK, "head_size": 8, "act": "relu", "norm": "t5", "norm_eps": 1e-6, "norm_position": "pre",
             "final_norm": True, "position": "relative", "relative_buckets": 8, "relative_max_distance": 20,
             "bias": False, "attention_scale": False}
    model = {"embedding": emb, "encoder": {**stack, "mask": "fully_visible"}, "tgt_embedding": dict(emb),
             "decoder": {**stack, "mask": "causal"}, "share_embedding": True,
             "targets": [{"type": "lm", "transform": False, "tie_weights": True, "output_bias": False,
                          "scale_before_output": True}]}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def gpt2_config(path):
    model = {"embedding": {"parts": ["word", "pos"], "vocab_size": 38, "max_seq_length": 64, "norm": "none", **SIZES},
             "encoder": {**STACK, "act": "gelu_new", "norm": "layernorm", "norm_eps": 1e-5, "norm_position": "pre",
                         "final_norm": True, "mask": "causal"},
             "targets": [{"type": "lm", "transform": False, "tie_weights": True, "output_bias": False}]}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def write_copy_task(path, count, seed, jsonl=False):
    """Sources of 2-5 words; the target is the source reversed."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    if jsonl:
        return write(path, "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    return write(path, "text_a\tlabel\n" + "".join(f"{s}\t{t}\n" for s, t in pairs))


@pytest.fixture(scope="module", params=["t5", "gpt2"])
def tuned(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"t2t-{request.param}")
    config = (t5_config if request.param == "t5" else gpt2_config)(root / "tiny.yaml")
    vocab = write_vocab(root / "vocab.txt")
    files = {"train": write_copy_task(root / "train.tsv", 32, 1), "dev": write_copy_task(root / "dev.jsonl", 8, 2, True),
             "test": write_copy_task(root / "test.tsv", 6, 3)}
    out = root / "ft"
    code = main(["finetune", "--task", "text2text", "--config", str(config), "--vocab", str(vocab),
                 "--train", str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]),
                 "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--seq-length", "12",
                 "train.progress=false", "train.tensorboard=false", "task.tgt_seq_length=6", "task.num_beams=2",
                 "task.metric=chrf"])
    assert code == 0
    return request.param, root, files, out


def test_finetune_predict_evaluate_generate(tuned, capsys):
    kind, root, files, out = tuned
    model = out / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["task"]["name"] == "text2text" and config["task"]["options"]["num_beams"] == 2
    assert config["generation"]["eos_token_id"] == 3 and config["generation"]["prompt_suffix_ids"] == [3]
    assert ("decoder_start_token_id" in config["generation"]) == (kind == "t5")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "chrf" and "test/bleu" in summary and "test/rougeL" in summary
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if "eval/bleu" in r] == [4, 8]

    predictions = root / "p.jsonl"
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(predictions)]) == 0
    outputs = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(outputs) == 6 and all(set(o) == {"output"} and isinstance(o["output"], str) for o in outputs)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    refs = [line.split("\t")[1] for line in files["test"].read_text().splitlines()[1:]]
    assert metrics == pytest.approx(text_metrics([o["output"] for o in outputs], refs))
    assert metrics["bleu"] == pytest.approx(summary["test/bleu"])

    # `modaloom generate` frames the prompt as the task did: the same output as predict with the same beams
    sources = [line.split("\t")[0] for line in files["test"].read_text().splitlines()[1:]]
    assert main(["generate", "--model", str(model), "--prompt", sources[0], "--num-beams", "2",
                 "--max-new-tokens", "6"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert clean_text(record["text"]) == outputs[0]["output"]


def test_hf_export_generates_what_predict_writes(tuned, tmp_path):
    transformers = pytest.importorskip("transformers")
    kind, root, files, out = tuned
    model = out / "model"
    greedy = tmp_path / "greedy"  # the same weights, with greedy decoding recorded
    import shutil

    shutil.copytree(model, greedy)
    config = json.loads((greedy / "config.json").read_text())
    config["task"]["options"]["num_beams"] = 1
    config["generation"]["num_beams"] = 1
    (greedy / "config.json").write_text(json.dumps(config))
    assert main(["predict", "--model", str(greedy), "--input", str(files["test"]), "--out", str(tmp_path / "p.jsonl")]) == 0
    ours = [json.loads(line)["output"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(greedy), str(tmp_path / "hf")]) == 0
    hf_generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert hf_generation["eos_token_id"] == 3 and hf_generation["max_new_tokens"] == 6
    sources = [line.split("\t")[0] for line in files["test"].read_text().splitlines()[1:]]
    if kind == "gpt2":
        generator = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
        theirs = [generator(s, add_special_tokens=True, return_full_text=False)[0]["generated_text"]
                  for s in sources]
    else:  # transformers 5 has no text2text-generation pipeline: what it did, by hand
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
        seq2seq = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
        theirs = []
        for s in sources:
            with torch.no_grad():
                ids = seq2seq.generate(**tokenizer(s, return_tensors="pt", return_token_type_ids=False))
            theirs.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    assert [clean_text(t) for t in theirs] == ours


def test_bad_model_and_lengths_are_clear_errors(tmp_path, capsys):
    from tests.train.data_helpers import tiny_bert_config

    vocab = write_vocab(tmp_path / "vocab.txt")
    train = write_copy_task(tmp_path / "t.tsv", 4, 1)
    base = ["finetune", "--task", "text2text", "--vocab", str(vocab), "--train", str(train), "--dev", str(train)]
    assert main([*base, "--config", str(tiny_bert_config(tmp_path / "bert.yaml", 38)), "--out",
                 str(tmp_path / "a"), "train.progress=false"]) == 2
    assert "text2text needs an encoder-decoder model" in capsys.readouterr().err
    assert main([*base, "--config", str(gpt2_config(tmp_path / "g.yaml")), "--out", str(tmp_path / "b"),
                 "--seq-length", "60", "task.tgt_seq_length=10"]) == 2
    assert "= 70 exceeds the model's max_seq_length 64" in capsys.readouterr().err
