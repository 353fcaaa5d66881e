"""``modaloom pretrain`` of one model with two targets (mlm + sp) whose weights follow schedules: both raw losses,
their weights and the weighted total are logged, and a run resumed mid-schedule weighs as the uninterrupted one."""

from __future__ import annotations

import json

import pytest
import yaml

from modaloom.cli.main import main
from tests.train.data_helpers import tiny_bert_config, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("weights") / "bert_data")


def scheduled_config(path):
    config = tiny_bert_config(path, train={"log_every": 1, "schedule": "constant", "warmup_steps": 0, "save_every": 3})
    spec = yaml.safe_load(config.read_text())
    spec["model"]["targets"] = [
        {"type": "mlm", "tie_weights": True, "weight": 1.0,
         "weight_schedule": {"type": "linear", "start_step": 0, "end_step": 4, "start_factor": 1.0, "end_factor": 0.5}},
        {"type": "sp", "weight": 2.0,
         "weight_schedule": {"type": "linear", "start_step": 1, "end_step": 5, "start_factor": 0.0, "end_factor": 1.0}},
    ]
    config.write_text(yaml.safe_dump(spec))
    return config


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def pretrain(config, data, out, steps, *extra):
    return main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(out), "--steps", str(steps),
                 "train.threads=1", *extra])


def test_weights_follow_their_schedules_are_logged_and_resume_exactly(tmp_path, data):
    config = scheduled_config(tmp_path / "c.yaml")
    assert pretrain(config, data, tmp_path / "full", 6) == 0
    full = [r for r in rows(tmp_path / "full") if "mlm_loss" in r]
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5, 6]
    # row of step k was trained at 0-based step k - 1
    assert [r["mlm_weight"] for r in full] == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5, 0.5])
    assert [r["sp_weight"] for r in full] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    for r in full:
        assert r["loss"] == pytest.approx(r["mlm_weight"] * r["mlm_loss"] + r["sp_weight"] * r["sp_loss"], rel=1e-5)
    # interrupted after step 3 (its checkpoint), then resumed mid-schedule to step 6
    assert pretrain(config, data, tmp_path / "split", 3) == 0
    assert pretrain(config, data, tmp_path / "split", 6, "--resume") == 0
    split = [r for r in rows(tmp_path / "split") if "mlm_loss" in r]
    assert [r["step"] for r in split] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, split, strict=True):
        assert (a["mlm_weight"], a["sp_weight"]) == (b["mlm_weight"], b["sp_weight"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
