"""parallelize: one function applying checkpointing, wrapping and compilation to a built model."""

from __future__ import annotations

import torch

from modaloom.train import distributed as dist_utils
from modaloom.train.config import TrainConfig
from modaloom.train.parallelize import parallel_mode, parallelize
from tests.train.standins import SyntheticLoader, TinyRegressor


def test_single_process_keeps_the_model_and_checkpoints_blocks():
    torch.manual_seed(0)
    model = TinyRegressor(dropout=0.0)
    batch = SyntheticLoader().global_batch(0, 0)
    expected = model(batch).loss
    placed = parallelize(model, TrainConfig(activation_checkpointing=True), dist_utils.DistInfo())
    assert placed.raw is model and placed.model is model and placed.forward is model
    assert all(block.forward.__wrapped__ for block in model.blocks)  # checkpointing wrappers in place
    loss = placed.forward(batch).loss
    loss.backward()
    assert torch.equal(loss, expected) and model.head.weight.grad is not None


def test_a_frozen_model_is_not_wrapped_in_ddp():
    frozen = TinyRegressor().requires_grad_(False)
    assert parallel_mode(TrainConfig(parallel="auto"), frozen) == "none"
    assert parallel_mode(TrainConfig(parallel="auto"), TinyRegressor()) == "ddp"
    assert parallel_mode(TrainConfig(parallel="fsdp"), frozen) == "fsdp"
