"""`modaloom pretrain --dry-run`: the plan printed from the config and at most the data's manifest; nothing
is written, --out is neither needed nor touched."""

from __future__ import annotations

import json

from modaloom.cli.main import main
from tests.train.data_helpers import tiny_bert_config, write_dataset


def snapshot(directory):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))}


def test_plan_from_a_zoo_config_needs_neither_data_nor_out(capsys):
    assert main(["pretrain", "--config", "llama/tiny", "--dry-run", "--nproc", "2", "--device", "cpu",
                 "--batch-size", "4", "--seq-length", "64", "train.grad_accum_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "estimated peak" in out and "parallel ddp" in out
    assert "tokens per step: 1,536 (batch 4 x seq 64 x grad_accum 3 x 2 rank(s))" in out


def test_data_gives_the_vocabulary_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "data")
    config = tiny_bert_config(tmp_path / "c.yaml")  # vocab_size 0: taken from the data
    before = snapshot(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--dry-run", "--json", "--device", "cpu", "train.parallel=fsdp"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["world_size"] == 4 and plan["parallel"] == "fsdp" and plan["tokens_per_step"] == 4 * 32 * 4
    vocab = 38  # the data's vocabulary: the word table is 38 x 16, and the MLM head ties it
    assert plan["parameters"]["embedding"] >= vocab * 16
    assert set(plan["memory"]) >= {"weights", "gradients", "optimizer", "activations", "fsdp_working_set"}
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_refusals(tmp_path, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    assert main(["pretrain", "--config", str(config), "--dry-run"]) == 2
    assert "vocab_size is 0" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(config), "--dry-run", "--data", str(tmp_path)]) == 2
    assert "cannot read the dataset manifest" in capsys.readouterr().err
    assert main(["pretrain", "--config", "bert/tiny", "--dry-run", "--nproc", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["pretrain", "--config", "bert/tiny", "--data", str(tmp_path)]) == 2
    assert "--out is required to train" in capsys.readouterr().err
    assert main(["pretrain", "--config", "bert/tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--nproc", "2"]) == 2
    assert "only go with --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_seq_length_unset_is_the_datasets_and_a_longer_one_is_refused(tmp_path, capsys):
    import yaml

    data = write_dataset(tmp_path / "data", seq_length=24)
    config = tiny_bert_config(tmp_path / "c.yaml")
    raw = yaml.safe_load(config.read_text())
    del raw["data"]["seq_length"]  # unset: the dataset's 24, not a default of 128
    config.write_text(yaml.safe_dump(raw))

    def plan(*extra: str) -> dict:
        assert main(["pretrain", "--config", str(config), "--data", str(data), "--dry-run", "--json",
                     "--device", "cpu", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    assert plan()["seq_length"] == 24
    assert plan("--seq-length", "16")["seq_length"] == 16  # shorter, set by the user: records are cut
    assert plan("--seq-length", "48", "data.padding=packing")["seq_length"] == 48  # records packed into 48
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--dry-run", "--seq-length", "48"]) == 2
    assert ("data.seq_length 48 exceeds the 24 tokens" in (err := capsys.readouterr().err)
            and "leave data.seq_length unset to use 24" in err and "--seq-length 48" in err), err
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--seq-length", "48"]) == 2  # training refuses it the same way
    assert "data.seq_length 48 exceeds the 24 tokens" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "run"), "--data", str(data),
                 "--steps", "1", "--batch-size", "4"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["seq_length"] == 24
    capsys.readouterr()
    raw["model"]["embedding"]["vocab_size"] = 40  # without --data the config names it
    config.write_text(yaml.safe_dump(raw))
    assert main(["pretrain", "--config", str(config), "--dry-run", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_length"] == 64  # no data: 128, at most the model's positions
