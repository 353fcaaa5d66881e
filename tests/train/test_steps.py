"""Evaluation as a reduction over per-example outputs: exact over a set whatever the batch sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from modaloom.errors import DataError
from modaloom.train.config import TrainConfig
from modaloom.train.steps import ModelSteps, concat_outputs, gather_outputs
from modaloom.train.trainer import Trainer
from tests.train.standins import SyntheticLoader


@dataclass
class Out:
    loss: torch.Tensor | None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)


class Classifier(nn.Module):
    """Predicts class = input_ids[:, 0] % 3; labels are in the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        logits = nn.functional.one_hot(batch["input_ids"][:, 0] % 3, 3).float() + self.w
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return Out(loss, {"cls_accuracy": accuracy.detach()}, {"cls": logits})


class AccuracyTask(ModelSteps):
    def eval_step(self, model, batch):
        out = model(batch)
        return {"correct": out.logits["cls"].argmax(-1) == batch["labels"], "ids": batch["input_ids"][:, 0].tolist()}

    def reduce(self, outputs):
        return {"accuracy": outputs["correct"].float().mean().item(), "examples": len(outputs["ids"])}


def uneven_batches():
    """Batch 1: 1 example, right; batch 2: 4 examples, 1 right. Exact accuracy 2/5, mean of batches 5/8."""
    first = {"input_ids": torch.tensor([[0, 1]]), "labels": torch.tensor([0])}
    second = {"input_ids": torch.tensor([[1, 0], [2, 0], [4, 0], [5, 0]]), "labels": torch.tensor([1, 0, 0, 0])}
    return [first, second]


def trainer(tmp_path, task=None, eval_batches=0):
    cfg = TrainConfig(steps=1, batch_size=1, progress=False, tensorboard=False, eval_batches=eval_batches)
    return Trainer(Classifier(), cfg, SyntheticLoader(), tmp_path, eval_loader=uneven_batches(), task=task)


def test_reduction_is_exact_over_batches_of_different_sizes(tmp_path):
    metrics = trainer(tmp_path, AccuracyTask()).evaluate()
    assert metrics == {"eval/accuracy": pytest.approx(2 / 5), "eval/examples": 5.0}
    # the default (per-batch rows, as pre-training reports) is the mean of batch accuracies instead
    default = trainer(tmp_path).evaluate()
    assert default["eval/cls_accuracy"] == pytest.approx((1 + 1 / 4) / 2)


def test_eval_outputs_are_per_example_and_respect_the_batch_limit(tmp_path):
    outputs = trainer(tmp_path, AccuracyTask()).eval_outputs()
    assert outputs["correct"].tolist() == [True, True, False, False, False] and outputs["ids"] == [0, 1, 2, 4, 5]
    limited = trainer(tmp_path, AccuracyTask(), eval_batches=1).eval_outputs()
    assert limited["ids"] == [0]


def test_default_eval_is_the_mean_over_batches_of_loss_and_metrics(tmp_path):
    model = Classifier()
    rows = [model(b) for b in uneven_batches()]
    metrics = trainer(tmp_path).evaluate()
    assert metrics["eval/loss"] == pytest.approx(sum(r.loss.item() for r in rows) / 2)


def test_outputs_must_be_per_example():
    with pytest.raises(DataError, match="'loss' is a scalar"):
        concat_outputs([{"loss": torch.tensor(1.0)}])
    with pytest.raises(DataError, match="mixes"):
        concat_outputs([{"x": torch.ones(1)}, {"x": [1]}])


def test_gather_without_a_process_group_is_the_local_concatenation():
    joined = gather_outputs([{"a": torch.ones(2, 3)}, {"a": torch.zeros(1, 3)}, {}])
    assert joined["a"].shape == (3, 3)
