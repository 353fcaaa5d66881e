"""convert --from tencentpretrain of run_classifier.py / run_ner.py checkpoints (state dicts built here in their
layout): head mapping, labels, and `modaloom predict` on the converted folder against the head computed by hand."""

from __future__ import annotations

import json

import pytest
import torch

from modaloom.cli.main import main
from modaloom.interop.tencentpretrain import modaloom_to_tencentpretrain, tencentpretrain_batch
from modaloom.model import Model, load
from tests.train.data_helpers import write_vocab

TP_CONFIG = {"emb_size": 16, "feedforward_size": 32, "hidden_size": 16, "hidden_act": "gelu", "heads_num": 2,
             "layers_num": 1, "max_seq_length": 64, "dropout": 0.1, "embedding": ["word", "pos", "seg"],
             "encoder": "transformer", "mask": "fully_visible", "target": ["mlm"], "tie_weights": True}


@pytest.fixture()
def body(tmp_path):
    """(config path, vocab path, the modaloom model behind the body, its TencentPretrain encoder tensors)."""
    from modaloom.interop.tencentpretrain import tencentpretrain_model_config

    config = tmp_path / "tiny_config.json"
    config.write_text(json.dumps(TP_CONFIG))
    vocab = write_vocab(tmp_path / "vocab.txt")
    size = len(vocab.read_text().split())
    torch.manual_seed(0)
    model = Model(tencentpretrain_model_config(config, {"embedding.word.embedding.weight": torch.zeros(size, 16)}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v for k, v in modaloom_to_tencentpretrain(model.eval()).items() if not k.startswith("target.")}
    return config, vocab, model, state


def hidden_states(model, tokenizer, ids):
    batch = tencentpretrain_batch(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    return model.encode(batch, None)[0][0]


def convert(tmp_path, state, config, vocab, labels, name="tp.bin"):
    torch.save(state, tmp_path / name)
    return main(["convert", "--from", "tencentpretrain", "--to", "modaloom", str(tmp_path / name),
                 str(tmp_path / "out"), "--config", str(config), "--labels", labels, "--vocab", str(vocab)])


def test_classifier_checkpoint_predicts_like_its_head(tmp_path, body, capsys):
    from modaloom.data.tokenizers import load_tokenizer

    config, vocab, model, state = body
    w1, b1, w2, b2 = torch.randn(16, 16), torch.randn(16), torch.randn(2, 16), torch.randn(2)
    state = {**state, "output_layer_1.weight": w1, "output_layer_1.bias": b1,
             "output_layer_2.weight": w2, "output_layer_2.bias": b2}
    assert convert(tmp_path, state, config, vocab, "neg,pos,other") == 2
    assert "has a classifier of 2 classes but --labels names 3" in capsys.readouterr().err
    assert convert(tmp_path, state, config, vocab, "neg,pos") == 0
    task = json.loads((tmp_path / "out" / "config.json").read_text())["task"]
    assert task["name"] == "classification" and task["labels"] == ["neg", "pos"] and task["options"]["pooler"]
    texts = ["the cat sat on a mat", "dogs ran fast"]
    (tmp_path / "in.tsv").write_text("text_a\n" + "\n".join(texts) + "\n")
    assert main(["predict", "--model", str(tmp_path / "out"), "--input", str(tmp_path / "in.tsv"),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    predictions = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    for text, record in zip(texts, predictions, strict=True):
        h = hidden_states(model, tok, [tok.cls_id, *tok.encode(text), tok.sep_id])[0]
        expected = (torch.tanh(h @ w1.T + b1) @ w2.T + b2).softmax(-1)
        assert [record["probabilities"][n] for n in ("neg", "pos")] == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("crf", [False, True])
def test_tagger_checkpoint_keeps_pad_class_crf_and_predicts(tmp_path, body, crf, capsys):
    from modaloom.data.tokenizers import load_tokenizer

    config, vocab, model, state = body
    label2id = tmp_path / "label2id.json"
    label2id.write_text(json.dumps({"O": 0, "B-ANI": 1, "I-ANI": 2}))
    w, b = torch.randn(4, 16), torch.randn(4)  # 3 labels + run_ner.py's [PAD]
    state = {**state, "output_layer.weight": w, "output_layer.bias": b}
    if crf:
        state.update({"crf.start_transitions": torch.randn(4), "crf.end_transitions": torch.randn(4),
                      "crf.transitions": torch.randn(4, 4)})
    torch.save(state, tmp_path / "tp.bin")
    assert main(["convert", "--from", "tencentpretrain", "--to", "modaloom", str(tmp_path / "tp.bin"),
                 str(tmp_path / "x"), "--config", str(config), "--vocab", str(vocab)]) == 2
    assert "its label names are not in the checkpoint: pass --labels" in capsys.readouterr().err
    assert convert(tmp_path, state, config, vocab, str(label2id)) == 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["task"]["labels"] == ["O", "B-ANI", "I-ANI", "[PAD]"]
    assert saved["task"]["options"] == {"label2id": "", "crf": crf, "tokenize": "lookup", "special_tokens": False}
    converted = load(tmp_path / "out")
    assert torch.equal(converted.targets["tagger"].output.weight, w)
    if crf:
        assert torch.equal(converted.targets["tagger"].crf.transitions, state["crf.transitions"])
    tokens = ["the", "cat", "Dogs", "ran"]  # "Dogs" is not in the vocabulary as is: [UNK], as run_ner.py
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": tokens}) + "\n")
    assert main(["predict", "--model", str(tmp_path / "out"), "--input", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    ids = [tok.token_to_id(t) if tok.token_to_id(t) is not None else tok.unk_id for t in tokens]
    logits = hidden_states(model, tok, ids) @ w.T + b
    if crf:
        best = converted.targets["tagger"].crf.decode(logits.unsqueeze(0), torch.ones(1, 4, dtype=torch.bool))[0]
    else:
        best = logits.argmax(-1)
    assert record["labels"] == [saved["task"]["labels"][i] for i in best.tolist()]


def test_pretrained_checkpoint_refuses_labels_and_keeps_its_vocab(tmp_path, body, capsys):
    config, vocab, model, _ = body
    assert convert(tmp_path, modaloom_to_tencentpretrain(model), config, vocab, "0,1") == 2
    assert "--labels is for fine-tuned TencentPretrain checkpoints" in capsys.readouterr().err
    assert main(["convert", "--from", "tencentpretrain", "--to", "modaloom", str(tmp_path / "tp.bin"),
                 str(tmp_path / "pre"), "--config", str(config), "--vocab", str(vocab)]) == 0
    from modaloom.data.tokenizers import load_tokenizer_dir

    assert load_tokenizer_dir(tmp_path / "pre" / "tokenizer").vocab_size == len(vocab.read_text().split())
