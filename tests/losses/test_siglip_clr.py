"""The clr target with ``loss: siglip``: its scale and bias parameters, their defaults, and a tiny CLIP
fine-tuned end to end whose loss falls and whose retrieval beats chance."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modaloom.cli.main import main
from modaloom.context import ForwardContext
from modaloom.model import build_model
from tests.model.test_parts_dual import clip_batch, clip_config
from tests.tasks.test_clip_tasks import tiny_clip_config, write_pairs, write_vocab


def test_clr_with_siglip_owns_a_bias_and_starts_where_the_paper_does():
    model = build_model(clip_config(loss="siglip"))
    clr = model.targets["clr"]
    assert clr.logit_scale.item() == pytest.approx(math.log(10)) and clr.logit_bias.item() == -10.0
    out = model(clip_batch())
    assert out.metrics["clr_logit_bias"] == -10.0 and out.metrics["clr_logit_scale"] == pytest.approx(10.0)
    out.loss.backward()
    assert clr.logit_bias.grad is not None and clr.logit_scale.grad is not None
    # infonce keeps CLIP's start and has no bias; an explicit logit_scale_init wins over the loss's default
    plain = build_model(clip_config()).targets["clr"]
    assert plain.logit_bias is None and plain.logit_scale.item() == pytest.approx(2.6592)
    assert "targets.clr.logit_bias" not in build_model(clip_config()).state_dict()
    set_here = build_model(clip_config(loss="siglip", logit_scale_init=1.0, logit_bias_init=-3.0)).targets["clr"]
    assert set_here.logit_scale.item() == 1.0 and set_here.logit_bias.item() == -3.0


def test_clr_siglip_loss_is_the_sigmoid_loss_of_its_features():
    model = build_model(clip_config(loss="siglip", logit_bias_init=-2.0))
    ctx = ForwardContext()
    out = model(clip_batch(), ctx=ctx)
    f0, f1 = ctx.features["clr"]
    logits = 10.0 * f0 @ f1.T - 2.0
    labels = 2 * torch.eye(3) - 1
    expected = -torch.nn.functional.logsigmoid(labels * logits).sum() / 3
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_tiny_clip_learns_with_siglip(tmp_path):
    config = tiny_clip_config(tmp_path / "clip.json")
    data = json.loads(config.read_text())
    data["model"]["targets"][0]["loss"] = "siglip"
    config.write_text(json.dumps(data))
    files = {"train": write_pairs(tmp_path, "train", 32, 0), "dev": write_pairs(tmp_path, "dev", 8, 1)}
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "clip_retrieval", "--config", str(config), "--vocab",
                 str(write_vocab(tmp_path / "vocab.txt")), "--train", str(files["train"]), "--dev",
                 str(files["dev"]), "--out", str(out), "--epochs", "6", "--batch-size", "8", "--lr", "3e-3",
                 "train.threads=1", "train.adam_bias_correction=true"]) == 0  # torch's AdamW: random init, lr 3e-3
    saved = json.loads((out / "model" / "config.json").read_text())["model"]["targets"][0]
    assert saved["loss"] == "siglip" and saved["logit_bias_init"] == -10.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["clr_loss"] for r in records if "clr_loss" in r]
    assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0]
    summary = json.loads((out / "summary.json").read_text())
    # 8 dev pairs: chance R@1 is 1/8 both ways (captions of one colour are alike, so at most 1/2 text -> image)
    assert (summary["eval/i2t_r@1"] + summary["eval/t2i_r@1"]) / 2 > 2 / 8
