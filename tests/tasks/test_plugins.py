"""A loss and a task added from this test file, without touching the package: registered, configured by
name (with their own options), trained a few steps through the one Trainer, evaluated exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modaloom import registry
from modaloom.batch import IGNORE_INDEX
from modaloom.config import load_config
from modaloom.errors import ConfigError
from modaloom.model import load
from modaloom.tasks import JobPaths, Task
from modaloom.train.distributed import DistInfo

MARK = 7  # the token whose presence the toy task classifies


@dataclass
class FocalOptions:
    gamma: float = 2.0  # down-weights easy examples (Lin et al. 2017); 0 is cross-entropy


@registry.register("loss", "test_focal")
class FocalLoss(nn.Module):
    """Focal loss over classes: mean of (1 - p_t)^gamma * -log p_t over rows whose label is not ignored."""

    Options = FocalOptions

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.gamma = cfg.gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels != IGNORE_INDEX
        logp = F.log_softmax(logits[keep].float(), -1).gather(1, labels[keep, None]).squeeze(1)
        return (-(1 - logp.exp()) ** self.gamma * logp).mean()


def marked_batch(generator: torch.Generator, size: int, length: int = 8) -> dict[str, torch.Tensor]:
    ids = torch.randint(10, 30, (size, length), generator=generator)
    labels = torch.randint(0, 2, (size,), generator=generator)
    where = torch.randint(1, length, (size,), generator=generator)
    ids[labels.bool(), where[labels.bool()]] = MARK
    ids[:, 0] = 2  # a [CLS]-like first token
    return {"input_ids": ids, "labels": labels}


class MarkedSequences:
    """An endless-per-epoch synthetic source: ``batches`` batches, the same ones every epoch (seeded)."""

    def __init__(self, seed: int, batches: int, sizes: tuple[int, ...]) -> None:
        self.seed, self.batches, self.sizes = seed, batches, sizes

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for i in range(self.batches):
            yield marked_batch(g, self.sizes[i % len(self.sizes)])


@registry.register("task", "test_marked")
class MarkedTokenTask(Task):
    """Does the sequence contain the mark token? Per-example evaluation, exact accuracy over the set."""

    name = "test_marked"

    def train_loader(self, info, model):
        return MarkedSequences(seed=1, batches=50, sizes=(16,))

    def eval_loader(self, info):
        return MarkedSequences(seed=2, batches=4, sizes=(16, 5, 9))  # uneven batches: a mean of means is off

    def eval_step(self, model, batch):
        logits = model(batch).logits["cls"]
        return {"correct": (logits.argmax(-1) == batch["labels"]).long(), "label": batch["labels"]}

    def reduce(self, outputs):
        correct = torch.as_tensor(outputs["correct"])
        return {"accuracy": float(correct.float().mean()), "examples": float(len(correct))}

    def prediction_records(self, outputs):
        for correct, label in zip(outputs["correct"].tolist(), outputs["label"].tolist()):
            yield {"label": label, "correct": bool(correct)}


def job(steps: int, gamma: float = 2.0) -> Any:
    return load_config(None, base={
        "model": {
            "embedding": {"parts": ["word", "pos"], "vocab_size": 32, "emb_size": 32, "max_seq_length": 8,
                          "dropout": 0.0},
            "encoder": {"hidden_size": 32, "layers_num": 1, "heads_num": 2, "feedforward_size": 64,
                        "dropout": 0.0},
            "targets": [{"type": "cls", "labels_num": 2, "pooling": "max", "loss": "test_focal", "gamma": gamma}],
        },
        "data": {"seq_length": 8},
        "train": {"steps": steps, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "schedule": "constant",
                  "eval_every": steps, "eval_batches": 0, "log_every": 10, "progress": False,
                  "tensorboard": False, "threads": 1},
    })


def test_the_toy_loss_is_configured_by_name_with_its_own_options():
    cfg = job(1, gamma=1.5)
    assert cfg.model.targets[0].gamma == 1.5 and not hasattr(cfg.model.targets[0], "label_smoothing")
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    p = torch.softmax(logits, -1)[:, 0]
    expected = float((-(1 - p) ** 1.5 * p.log()).mean())
    assert FocalLoss(cfg.model.targets[0])(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="unknown key 'label_smoothing' for target type 'cls' with loss 'test_focal'"):
        load_config(None, base={"model": {"targets": [{"type": "cls", "loss": "test_focal", "label_smoothing": 0.1}]}})


def test_a_task_from_a_test_file_trains_evaluates_predicts_and_exports(tmp_path):
    task_cls = registry.get("task", "test_marked")
    task = task_cls(job(60), JobPaths(data=tmp_path / "data", out=tmp_path / "run"))
    torch.manual_seed(0)
    summary = task.run()
    assert summary["steps"] == 60 and summary["eval/examples"] == 16 + 5 + 9 + 16
    assert summary["eval/accuracy"] >= 0.9, summary  # chance is about 0.5
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in history if "loss" in row]
    assert losses[-1] < losses[0] / 2
    model = load(tmp_path / "run" / "model")
    assert isinstance(model.targets["cls"].loss, FocalLoss) and model.targets["cls"].loss.gamma == 2.0
    path = task.predict(model.eval(), task.eval_loader(None), tmp_path / "predictions.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 46 and sum(r["correct"] for r in records) / 46 == pytest.approx(summary["eval/accuracy"])
    # the batches go where the model is, whatever device the process would pick (a GPU, here a fake one)
    elsewhere = task.predict(model.eval(), task.eval_loader(None), tmp_path / "again.jsonl",
                             info=DistInfo(device=torch.device("meta")))
    assert elsewhere.read_text() == path.read_text()
