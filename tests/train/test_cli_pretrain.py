"""`modaloom pretrain` end to end on a tiny real dataset, and each refusal before training starts."""

from __future__ import annotations

import json
import os

import pytest

import modaloom
from modaloom.cli.main import main
from tests.train.data_helpers import tiny_bert_config, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cli") / "bert_data")


def pretrain(config, data, out, *extra):
    return main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(out), *extra])


def test_trains_writes_outputs_and_resumes(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    assert pretrain(config, data, tmp_path / "out", "--steps", "4", "train.eval_every=2",
                    "train.eval_holdout=8") == 0
    printed = capsys.readouterr().out
    assert "curves.png" in printed and "summary.json" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 4 and "eval/loss" in summary and summary["peak_rss_mb"] > 0
    model = modaloom.model.load(tmp_path / "out" / "model")
    assert model.config.embedding.vocab_size == 38  # filled in from the data's vocabulary
    assert (tmp_path / "out" / "model" / "tokenizer").is_dir()
    # a second run into the same --out continues only when asked to
    assert pretrain(config, data, tmp_path / "out", "--steps", "6") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert pretrain(config, data, tmp_path / "out", "--steps", "6", "--resume") == 2  # other holdout split
    assert "cannot resume the data loader" in capsys.readouterr().err
    assert pretrain(config, data, tmp_path / "out", "--steps", "6", "--resume", "train.eval_every=2",
                    "train.eval_holdout=8") == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 6


def refusal(capsys, *args):
    assert pretrain(*args) == 2
    return capsys.readouterr().err


def test_config_errors_are_refused(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    assert "did you mean 'steps'" in refusal(capsys, config, data, tmp_path / "o", "train.stepz=3")
    assert "valid choices" in refusal(capsys, config, data, tmp_path / "o", "train.optimizer=adam")
    err = refusal(capsys, config, data, tmp_path / "o", "data.seq_length=128")
    assert "max_seq_length" in err and not (tmp_path / "o").exists()


def test_data_from_another_processor_is_refused(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    err = refusal(capsys, config, data, tmp_path / "o", "data.processor=lm")
    assert "preprocessed with processor 'bert'" in err and "data.processor=bert" in err


def test_vocab_size_mismatch_is_refused(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml", vocab_size=21128)
    err = refusal(capsys, config, data, tmp_path / "o")
    assert "vocab_size is 21128" in err and "vocabulary of 38" in err and "vocab_size=38" in err


def test_data_without_the_targets_labels_is_refused(tmp_path, capsys):
    lm_data = write_dataset(tmp_path / "lm_data", processor="lm")
    config = tiny_bert_config(tmp_path / "c.yaml")
    err = refusal(capsys, config, lm_data, tmp_path / "o")
    assert "lm_labels" in err and "preprocess with a matching processor" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir_is_refused(tmp_path, data, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = refusal(capsys, tiny_bert_config(tmp_path / "c.yaml"), data, locked / "out")
    assert "file/out: Not a directory" in err and "Traceback" not in err


def test_out_dir_that_is_a_file_is_refused(tmp_path, data, capsys):
    (tmp_path / "file").write_text("x")
    err = refusal(capsys, tiny_bert_config(tmp_path / "c.yaml"), data, tmp_path / "file" / "out")
    assert "file/out: Not a directory" in err and "Traceback" not in err


def test_resume_with_another_model_is_refused(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    assert pretrain(config, data, tmp_path / "out", "--steps", "2") == 0
    capsys.readouterr()
    err = refusal(capsys, config, data, tmp_path / "out", "--resume", "--steps", "4", "model.encoder.layers_num=2")
    assert "different model" in err and "encoder.layers_num: 1 there, 2 here" in err
