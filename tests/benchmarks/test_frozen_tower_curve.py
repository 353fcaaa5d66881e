"""``benchmarks/frozen_tower_curve.py``: the LiT run loads and locks the image parts, both runs share the budget,
and the whole route runs end to end in quick mode on tiny synthetic images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from modaloom.demo import vision_language as vl
from modaloom.weights import read_weights
from tests.demo.test_demo_vision_language import synthetic_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import frozen_tower_curve as ftc  # noqa: E402


def test_the_table_lists_both_runs_at_every_evaluated_step():
    train = {"lit": {5: 3.0, 10: 2.5}, "scratch": {5: 3.4, 10: 3.1}}
    dev = {"lit": {10: 0.2}, "scratch": {10: 0.1}}
    text = ftc.table(train, dev, {"tower": 0.3, "lit": 0.4, "scratch": 0.2}, {"tower": 1.0, "lit": 2.0, "scratch": 3.0})
    assert "| 10 | 2.500 | 0.200 | 3.100 | 0.100 |" in text
    assert "| lit | 0.400 | 2 |" in text and "| tower | 0.300 | 1 |" in text


@pytest.mark.timeout(300)
def test_lit_and_scratch_quick_on_synthetic_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vl, "fashion_mnist_splits", synthetic_splits)
    work = tmp_path / "w"
    assert ftc.main(["--work", str(work), "--size", "quick", "--threads", "1"]) == 0
    saved = json.loads((work / "frozen_tower_curve.json").read_text())
    assert set(saved["zero_shot"]) == {"tower", "lit", "scratch"}
    assert all(0.0 <= v <= 1.0 for v in saved["zero_shot"].values())
    assert set(saved["dev_mean_recall"]["lit"]) == set(saved["dev_mean_recall"]["scratch"])  # same eval steps
    lit = yaml.safe_load((work / "lit.yaml").read_text())
    assert lit["model"] == yaml.safe_load((work / "scratch.yaml").read_text())["model"]
    assert lit["train"]["freeze"] == ftc.IMAGE_PARTS
    tower = read_weights(work / "runs" / "tower" / "model" / "model.safetensors")
    after = read_weights(work / "runs" / "lit" / "model" / "model.safetensors")
    image = [k for k in tower if any(k.startswith(f"{p}.") for p in ftc.IMAGE_PARTS)]
    assert image and all((after[k] == tower[k]).all() for k in image)  # loaded and locked
    text = [k for k in tower if k.startswith("encoder.streams.0.")]
    assert any(not (after[k] == tower[k]).all() for k in text)  # the text tower trained from its own start
    assert (work / "frozen_tower_curve.png").is_file()
    assert "| run | zero-shot acc | train wall s |" in capsys.readouterr().out
