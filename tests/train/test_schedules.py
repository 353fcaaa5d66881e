import math

import pytest

from modaloom.errors import ConfigError
from modaloom.registry import names
from modaloom.train.config import TrainConfig
from modaloom.train.schedules import lr_at


def cfg(**kw):
    base = {"steps": 100, "lr": 1.0, "warmup_steps": 10}
    base.update(kw)
    return TrainConfig(**base)


def test_every_schedule_is_registered():
    assert set(names("scheduler")) >= {"constant", "constant_with_warmup", "linear", "cosine",
                                       "cosine_with_restarts", "polynomial", "inverse_sqrt", "tristage"}


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                  "polynomial", "inverse_sqrt"])
def test_warmup_is_linear_from_zero(name):
    c = cfg(schedule=name)
    assert lr_at(0, c) == 0.0
    assert lr_at(5, c) == pytest.approx(0.5)
    assert lr_at(10, c) == pytest.approx(1.0)


def test_values_at_key_steps():
    assert lr_at(55, cfg(schedule="linear")) == pytest.approx(0.5)
    assert lr_at(100, cfg(schedule="linear")) == pytest.approx(0.0)
    assert lr_at(55, cfg(schedule="cosine")) == pytest.approx(0.5)
    assert lr_at(100, cfg(schedule="cosine", min_lr_ratio=0.1)) == pytest.approx(0.1)
    assert lr_at(55, cfg(schedule="polynomial", power=2.0)) == pytest.approx(0.25)
    assert lr_at(40, cfg(schedule="inverse_sqrt")) == pytest.approx(0.5)
    assert lr_at(3, cfg(schedule="inverse_sqrt", warmup_steps=0)) == pytest.approx(0.5)
    assert lr_at(77, cfg(schedule="constant")) == 1.0
    assert lr_at(77, cfg(schedule="constant_with_warmup")) == 1.0


def test_cosine_with_restarts_returns_to_peak():
    c = cfg(schedule="cosine_with_restarts", cycles=2.0)
    assert lr_at(55, c) == pytest.approx(1.0)  # second cycle starts half way
    assert lr_at(32, c) == pytest.approx(0.5, abs=0.02)  # middle of the first cycle
    assert lr_at(54, c) < 0.01


def test_tristage():
    c = cfg(schedule="tristage", tristage_ratios=[0.1, 0.4, 0.5], tristage_final_scale=0.01)
    assert lr_at(5, c) == pytest.approx(0.5)
    assert lr_at(30, c) == 1.0
    assert lr_at(75, c) == pytest.approx(math.sqrt(0.01))
    assert lr_at(100, c) == pytest.approx(0.01)


def test_warmup_ratio_overrides_steps():
    c = cfg(schedule="linear", warmup_ratio=0.2)
    assert c.warmup == 20
    assert lr_at(10, c) == pytest.approx(0.5)


def test_bad_values_are_refused():
    from modaloom.config_schema import build

    with pytest.raises(ConfigError, match="tristage_ratios"):
        build(TrainConfig, {"tristage_ratios": [0.5, 0.5, 0.5]})
    with pytest.raises(ConfigError, match="valid choices"):
        build(TrainConfig, {"schedule": "cosin"})
