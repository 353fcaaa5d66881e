"""Fine-tuning defaults: TencentPretrain's run_classifier.py recipe, optimizer included."""

from __future__ import annotations

from modaloom.tasks.finetune import finetune_config
from modaloom.train.optim import AdamWNoBiasCorrection, build_optimizer
from tests.train.standins import TinyRegressor


def test_finetune_defaults_are_tencentpretrains_adamw_without_bias_correction():
    # lr 2e-5 is TencentPretrain's value for an AdamW without bias correction; with torch's bias-corrected
    # AdamW its first steps are ~3x smaller and a tiny BERT does not learn book_review in 2 epochs (docs/tasks.md)
    train = finetune_config(None, "bert/tiny", []).train
    assert (train.lr, train.warmup_ratio, train.schedule, train.adam_bias_correction) == (2e-5, 0.1, "linear", False)
    assert isinstance(build_optimizer(TinyRegressor(), train), AdamWNoBiasCorrection)
    assert finetune_config(None, "bert/tiny", ["train.adam_bias_correction=true"]).train.adam_bias_correction
