"""`modaloom grow`: a trained folder grown on the command line gives the same outputs and trains on."""

from __future__ import annotations

import json

import torch

import modaloom
from modaloom.cli.main import main
from tests.tasks.test_classification import write_split
from tests.train.data_helpers import tiny_bert_config, write_dataset


def test_grow_a_trained_model_and_continue_pretraining(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", documents=20)
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 2})
    args = ["pretrain", "--config", str(config), "--data", str(data)]
    pre_norm = ["model.encoder.norm_position=pre", "model.embedding.dropout=0.0"]
    assert main([*args, "--out", str(tmp_path / "a"), *pre_norm]) == 0
    src, dst = tmp_path / "a" / "model", tmp_path / "grown"
    capsys.readouterr()
    assert main(["grow", str(src), str(dst), "--depth", "2", "--ffn-size", "48"]) == 0
    out = capsys.readouterr().out
    assert "function-preserving" in out and "NOT" not in out
    assert "model.encoder.layers_num=3 model.encoder.feedforward_size=48" in out
    record = json.loads((dst / "config.json").read_text())["growth"]
    assert record["function_preserving"] and record["from"] == str(src)
    assert (dst / "tokenizer").is_dir()

    original, grown = modaloom.load(src).eval(), modaloom.load(dst).eval()
    ids = torch.randint(5, 38, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "segment_ids": torch.ones_like(ids)}
    with torch.no_grad():
        a, b = original(batch).logits, grown(batch).logits
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0)

    # the grown folder continues training: the config names the grown shape, every key matches
    assert main([*args, "--out", str(tmp_path / "b"), "--init-from", str(dst), *pre_norm,
                 "model.encoder.layers_num=3", "model.encoder.feedforward_size=48"]) == 0
    assert "every key matched" in capsys.readouterr().err
    assert modaloom.load(tmp_path / "b" / "model").config.encoder.layers_num == 3
    # and fine-tunes: the folder is an ordinary model folder with its tokenizer
    train, dev = write_split(tmp_path / "train.tsv", 16, 1), write_split(tmp_path / "dev.tsv", 8, 2)
    assert main(["finetune", "--task", "classification", "--model", str(dst), "--train", str(train), "--dev", str(dev),
                 "--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "8", "train.progress=false",
                 "train.tensorboard=false"]) == 0
    assert modaloom.load(tmp_path / "ft" / "model").config.encoder.feedforward_size == 48


def test_grow_refusals(tmp_path, capsys):
    assert main(["grow", str(tmp_path / "missing"), str(tmp_path / "out"), "--depth", "1"]) == 2
    assert "not a modaloom model folder" in capsys.readouterr().err
    cfg = {"embedding": {"parts": ["word", "pos"], "vocab_size": 20, "emb_size": 8, "max_seq_length": 8},
           "encoder": {"hidden_size": 8, "layers_num": 1, "heads_num": 2, "feedforward_size": 16},
           "targets": [{"type": "mlm"}]}
    src = modaloom.build_model(cfg).save(tmp_path / "m")
    assert main(["grow", str(src), str(tmp_path / "o"), "--depth", "1", "--depth-mode", "identity"]) == 2
    assert "post-norm stack" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["grow", str(src), str(tmp_path / "o"), "--depth", "1"]) == 0
    assert "NOT function-preserving" in capsys.readouterr().out
