"""Per-target loss weights and their schedules: the weighted sum, the factor at given steps, the step source."""

import json
import math

import pytest
import torch

from modaloom.config_schema import Source, build
from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.model import LossWeightClock, build_model
from modaloom.model_config import WeightSchedule
from modaloom.train.hooks import part_hooks
from tests.model.test_model_core import TINY_BERT, bert_batch


def config_with(schedule: dict | None, weight: float = 0.5) -> dict:
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["targets"][1]["weight"] = weight
    if schedule is not None:
        cfg["targets"][1]["weight_schedule"] = schedule
    return cfg


def schedule(**kw) -> WeightSchedule:
    return build(WeightSchedule, kw, Source(), "weight_schedule")


def test_total_is_the_hand_computed_weighted_sum_and_each_target_is_reported():
    cfg = config_with(None, weight=0.25)
    cfg["targets"][0]["weight"] = 2.0
    out = build_model(cfg).eval()(bert_batch())
    mlm, sp = out.metrics["mlm_loss"], out.metrics["sp_loss"]
    assert torch.allclose(out.loss, 2.0 * mlm + 0.25 * sp)
    assert out.metrics["mlm_weight"].item() == 2.0 and out.metrics["sp_weight"].item() == 0.25
    assert torch.allclose(out.metrics["loss"], 2.0 * mlm + 0.25 * sp)


def test_a_single_target_model_reports_no_weight():
    cfg = json.loads(json.dumps(TINY_BERT))
    cfg["targets"] = cfg["targets"][:1]
    assert "mlm_weight" not in build_model(cfg).eval()(bert_batch()).metrics


@pytest.mark.parametrize("kind, expected", [
    ("linear", [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
    ("cosine", [0.0, 0.0, 0.0, 0.5 * (1 - math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(3 * math.pi / 4)),
                1.0, 1.0]),
    ("step", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]),
    ("constant", [1.0] * 8),
])
def test_factor_at_given_steps(kind, expected):
    s = schedule(type=kind, start_step=2, end_step=6, start_factor=0.0, end_factor=1.0)
    assert [s.factor(step) for step in range(8)] == pytest.approx(expected)
    assert s.factor(None) == (1.0 if kind == "constant" else 1.0)  # outside training: the end value


def test_a_decaying_schedule_and_its_weight():
    s = schedule(type="linear", start_step=0, end_step=10, start_factor=2.0, end_factor=0.5)
    assert s.factor(0) == 2.0 and s.factor(5) == pytest.approx(1.25) and s.factor(10) == 0.5
    cfg = build_model(config_with({"type": "linear", "end_step": 10, "start_factor": 2.0, "end_factor": 0.5},
                                  weight=0.4)).config.targets[1]
    assert cfg.weight_at(5) == pytest.approx(0.4 * 1.25) and cfg.weight_at(None) == pytest.approx(0.2)


@pytest.mark.parametrize("bad, words", [
    ({"start_step": 5, "end_step": 2}, "start_step <= end_step"),
    ({"end_factor": -1.0}, "factors must be >= 0"),
    ({"type": "exp"}, "valid choices"),
    ({"from": 0.0}, "unknown key 'from'"),
])
def test_bad_schedules_are_refused(bad, words):
    with pytest.raises(ConfigError, match=words):
        build_model(config_with(bad))


def test_the_step_comes_from_the_context_or_the_trainer_hook():
    model = build_model(config_with({"type": "linear", "start_step": 0, "end_step": 4}, weight=1.0)).eval()
    batch = bert_batch()
    at = {step: model(batch, ForwardContext(step=step)) for step in (0, 2, 4)}
    for step, out in at.items():
        expected = out.metrics["mlm_loss"] + (step / 4) * out.metrics["sp_loss"]
        assert torch.allclose(out.loss, expected) and out.metrics["sp_weight"].item() == step / 4
    assert model(batch).metrics["sp_weight"].item() == 1.0  # no step at all: the end value
    hooks = part_hooks(model)
    assert [type(h) for h in hooks] == [LossWeightClock]

    class Trainer:
        step = 3

    hooks[0].before_step(Trainer())
    assert model.step == 3 and model(batch).metrics["sp_weight"].item() == 0.75
    assert "loss_weights" not in model.state_dict()  # derived from the step: nothing to save


def test_without_a_schedule_there_is_no_hook_and_the_saved_config_round_trips(tmp_path):
    import modaloom

    assert part_hooks(build_model(config_with(None))) == []
    model = build_model(config_with({"type": "cosine", "end_step": 7}))
    model.save(tmp_path / "m")
    loaded = modaloom.load(tmp_path / "m").config.targets[1].weight_schedule
    assert loaded == WeightSchedule(type="cosine", end_step=7)
