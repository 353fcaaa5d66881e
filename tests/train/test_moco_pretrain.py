"""``modaloom pretrain`` with the moco target on tiny coloured squares and their captions: the loss falls."""

from __future__ import annotations

import json
import math

import modaloom
from modaloom.cli.main import main
from tests.tasks.test_clip_tasks import tiny_clip_config, write_pairs, write_vocab


def test_moco_pretrain_learns_and_fills_its_queues(tmp_path):
    corpus, vocab = write_pairs(tmp_path, "train", 32, 0), write_vocab(tmp_path / "vocab.txt")
    config = tiny_clip_config(tmp_path / "clip.json")
    spec = json.loads(config.read_text())
    spec["model"]["targets"] = [{"type": "moco", "feature_size": 16, "poolings": ["mean", "first"],
                                 "momentum": 0.9, "queue_size": 16}]
    config.write_text(json.dumps(spec))
    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["preprocess", "--processor", "clip", "--corpus", str(corpus), "--vocab", str(vocab), "--out",
                 str(data), "--seq-length", "16", "--option", "image_height=16", "--option", "image_width=16"]) == 0
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(out), "--steps", "38",
                 "--batch-size", "8", "--lr", "3e-3", "train.threads=1", "train.log_every=5"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["moco_loss"] for r in rows]
    chance = math.log(8 + 16)  # 8 keys of the batch and 16 queued ones per query
    assert rows[-1]["moco_queue_filled"] == 16 and rows[-1]["step"] == 38
    assert losses[-1] < 0.7 * losses[0] and losses[-1] < 0.6 * chance, losses
    # the exported model is a plain dual model: no momentum copy, no queue in its weights
    model = modaloom.load(out / "model")
    assert not [k for k in model.state_dict() if "momentum" in k or "queue" in k]
    assert "targets.moco.logit_scale" in model.state_dict()
    # the task hands the target's hook to the Trainer: its state is in the checkpoint and resumes (38 steps
    # of 4 batches an epoch: resuming exactly at an epoch's end is refused for any target, a separate issue)
    saved = json.loads((out / "checkpoints" / "step-38" / "rank-0.json").read_text())["hooks"]
    assert [e["name"] for e in saved] == ["momentum_contrast:moco"]
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(out), "--steps", "42",
                 "--batch-size", "8", "--lr", "3e-3", "train.threads=1", "train.log_every=5", "--resume"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 42
