"""A fine-tuning run stopped after its first epoch's checkpoint and resumed ends as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import torch
from safetensors.torch import load_file

from modaloom.cli.main import main
from modaloom.tasks.finetune import BestDev
from tests.tasks.test_classification import write_split
from tests.train.data_helpers import tiny_bert_config, write_vocab

STEPS_PER_EPOCH = 6  # 48 training examples, batch 8


def finetune(tmp_path, files, out, *extra):
    config = tiny_bert_config(tmp_path / "tiny.yaml")
    return main(["finetune", "--task", "classification", "--config", str(config), "--vocab", str(files["vocab"]),
                 "--train", str(files["train"]), "--dev", str(files["dev"]), "--out", str(out), "--epochs", "3",
                 "--batch-size", "8", "--lr", "1e-3", *extra, "train.progress=false", "train.tensorboard=false"])


def test_sigint_after_the_first_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    files = {name: write_split(tmp_path / f"{name}.tsv", n, seed)
             for name, n, seed in (("train", 48, 1), ("dev", 16, 2))}
    files["vocab"] = write_vocab(tmp_path / "vocab.txt")
    assert finetune(tmp_path, files, tmp_path / "whole") == 0
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())

    original = BestDev.__call__

    def stop_after_first_epoch(self, trainer):
        original(self, trainer)
        if trainer.step == STEPS_PER_EPOCH:  # the epoch's evaluation and checkpoint still run
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(BestDev, "__call__", stop_after_first_epoch)
    assert finetune(tmp_path, files, tmp_path / "split") == 130
    monkeypatch.setattr(BestDev, "__call__", original)
    split = tmp_path / "split"
    assert sorted(p.name for p in (split / "checkpoints").iterdir() if p.name.startswith("step")) == ["step-6"]
    first_best = json.loads((split / "best" / "config.json").read_text())["step"]
    assert first_best == STEPS_PER_EPOCH

    assert finetune(tmp_path, files, split, "--resume") == 0
    resumed = json.loads((split / "summary.json").read_text())
    assert resumed["best_dev"] == whole["best_dev"]  # the first epoch's best value was kept and compared
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(split / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = load_file(str(tmp_path / "whole" / "checkpoints" / "step-18" / "model.safetensors"))
    last_b = load_file(str(split / "checkpoints" / "step-18" / "model.safetensors"))
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)  # the last weights too, not only the best
