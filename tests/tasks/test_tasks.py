"""The Task contract: registry, model initialisation from a folder, predictions, pretrain's evaluation."""

from __future__ import annotations

import json

import pytest
import torch

import modaloom
from modaloom import registry
from modaloom.cli.main import main
from modaloom.errors import CheckpointError, ConfigError
from modaloom.tasks import JobPaths, Task, load_job_config
from modaloom.tasks.base import initial_model, write_jsonl
from modaloom.tasks.pretrain import PretrainTask
from modaloom.train.config import TrainConfig
from modaloom.train.steps import ModelSteps
from modaloom.train.trainer import Trainer
from tests.train.data_helpers import tiny_bert_config, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tasks") / "bert_data")


def job(tmp_path, *overrides, layers=1):
    return load_job_config(tiny_bert_config(tmp_path / f"c{layers}.yaml", vocab_size=38, layers=layers), list(overrides))


def test_pretrain_is_a_registered_task():
    assert registry.get("task", "pretrain") is PretrainTask and "pretrain" in registry.names("task")
    with pytest.raises(ConfigError, match="unknown task 'pretrian'.*did you mean 'pretrain'"):
        registry.get("task", "pretrian")


def test_initial_model_from_config_folder_or_both(tmp_path):
    cfg = job(tmp_path)
    torch.manual_seed(0)
    saved = modaloom.build_model(cfg.model).save(tmp_path / "m")
    alone, report = initial_model(None, saved)  # the folder's own config: every key checked
    assert report.describe().endswith("every key matched")
    same, report = initial_model(cfg.model, saved)
    assert not report.missing and not report.unexpected
    for (name, a), b in zip(alone.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), name
    # a configured model with one more layer: the folder lacks its keys, which are listed, not hidden
    bigger, report = initial_model(job(tmp_path, layers=2).model, saved)
    assert report.missing and all(".1." in k for k in report.missing) and not report.unexpected
    assert "left randomly initialised" in report.describe()
    smaller_saved = modaloom.build_model(job(tmp_path, layers=2).model).save(tmp_path / "m2")
    _, report = initial_model(cfg.model, smaller_saved)
    assert report.unexpected and not report.missing
    wider = job(tmp_path, "model.encoder.feedforward_size=48").model
    with pytest.raises(CheckpointError, match="shape mismatch"):
        initial_model(wider, saved)


def test_positions_are_checked_against_text_length_only():
    from modaloom.config import load_config
    from modaloom.tasks.pretrain import check_positions

    def config(parts, max_positions):
        return load_config(base={"model": {"embedding": {"parts": parts, "max_seq_length": max_positions}},
                            "data": {"seq_length": 128}})

    with pytest.raises(ConfigError, match="data.seq_length 128 exceeds model.embedding.max_seq_length 17"):
        check_positions(config(["word", "pos"], 17))
    check_positions(config(["patch", "pos"], 17))  # a ViT's 16 patches + 1: the text length does not apply
    check_positions(config(["masked_patch", "pos"], 17))  # BEiT's masked patches likewise
    with pytest.raises(ConfigError, match="max_seq_length 17"):
        check_positions(config(["word", "patch", "pos"], 17))


def test_pretrain_refuses_a_folder_that_does_not_match(tmp_path, data):
    saved = modaloom.build_model(job(tmp_path).model).save(tmp_path / "m")
    task = PretrainTask(job(tmp_path, layers=2), JobPaths(data=data, out=tmp_path / "o", init_from=saved))
    with pytest.raises(CheckpointError, match=r"match the config exactly.*keys not in the folder"):
        task.build_model()


def test_cli_init_from_continues_from_a_model_folder(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    args = ["pretrain", "--config", str(config), "--data", str(data), "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a" / "model")]) == 0
    assert "every key matched" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "a" / "model"),
                 "model.encoder.layers_num=2"]) == 2
    assert "keys not in the folder" in capsys.readouterr().err


def test_pretrain_evaluation_is_the_mean_over_batches(tmp_path, data):
    """The numbers the Trainer reported before tasks: sum over eval batches / number of batches."""
    cfg = job(tmp_path, "train.eval_every=1", "train.eval_holdout=11", "train.eval_batches=0")
    task = PretrainTask(cfg, JobPaths(data=data, out=tmp_path / "o"))
    task.prepare()
    torch.manual_seed(0)
    model = task.build_model()
    info = modaloom.train.distributed.DistInfo()
    batches = list(task.eval_loader(info))
    assert len(batches) == 3 and batches[-1]["input_ids"].shape[0] < batches[0]["input_ids"].shape[0]
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            out = model(batch)
            for key, value in {**out.metrics, "loss": out.loss}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
    trainer = Trainer(model, cfg.train, batches, tmp_path / "o", eval_loader=batches, task=task)
    got = trainer.evaluate()
    assert got.keys() == {f"eval/{k}" for k in sums}
    for key, total in sums.items():
        assert got[f"eval/{key}"] == pytest.approx(total / len(batches), rel=1e-6)


class Parity(Task):
    """A toy task predicting whether the first token id is even."""

    name = "parity"

    def eval_step(self, model, batch):
        return {"id": batch["input_ids"][:, 0], "even": batch["input_ids"][:, 0] % 2 == 0}

    def prediction_records(self, outputs):
        for i, even in zip(outputs["id"].tolist(), outputs["even"].tolist()):
            yield {"id": i, "even": even}


def test_predict_writes_jsonl_records(tmp_path):
    loader = [{"input_ids": torch.tensor([[2, 1], [3, 1]])}, {"input_ids": torch.tensor([[4, 0]])}]
    task = Parity(job(tmp_path), JobPaths(data=tmp_path, out=tmp_path))
    path = task.predict(torch.nn.Identity(), loader, tmp_path / "pred" / "out.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [{"id": 2, "even": True}, {"id": 3, "even": False}, {"id": 4, "even": True}]
    with pytest.raises(ConfigError, match="task 'pretrain' writes no predictions"):
        PretrainTask(job(tmp_path), JobPaths(data=tmp_path, out=tmp_path)).predict(
            torch.nn.Identity(), loader, tmp_path / "p.jsonl")


def test_write_jsonl_replaces_atomically(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"a": 1}])

    def failing():
        yield {"a": 2}
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_jsonl(path, failing())
    assert path.read_text() == '{"a": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]


def test_tasks_are_the_trainer_step_functions(tmp_path):
    assert issubclass(Task, ModelSteps)
    cfg = TrainConfig(steps=1, progress=False, tensorboard=False)
    assert isinstance(Trainer(torch.nn.Linear(2, 2), cfg, [], tmp_path).task, ModelSteps)
