"""After-step hooks: called once per optimizer step with the Trainer; their state resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from modaloom.errors import CheckpointError
from modaloom.train.config import TrainConfig
from modaloom.train.trainer import Trainer
from tests.train.standins import SyntheticLoader, TinyRegressor


class EmaHook:
    """An EMA copy of the head weight (a momentum encoder in miniature), a step counter, a step log."""

    name = "ema"

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.ema: torch.Tensor | None = None
        self.calls = 0
        self.seen_steps: list[int] = []

    def __call__(self, trainer) -> None:
        weight = trainer.raw_model.head.weight.detach()
        if self.ema is not None:  # restored state comes back on the CPU (train/hooks.py)
            self.ema = self.ema.to(weight.device)
        self.ema = weight.clone() if self.ema is None else self.decay * self.ema + (1 - self.decay) * weight
        self.calls += 1
        self.seen_steps.append(trainer.step)

    def state_dict(self) -> dict:
        return {"ema": self.ema, "calls": self.calls, "nested": {"decay": self.decay, "steps": self.seen_steps}}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].clone()
        self.calls = state["calls"]
        self.decay = state["nested"]["decay"]
        self.seen_steps = list(state["nested"]["steps"])


class Stateless:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def __call__(self, trainer) -> None:
        self.steps.append(trainer.step)


def config(**kw) -> TrainConfig:
    base = {"steps": 8, "batch_size": 8, "lr": 1e-2, "log_every": 0, "progress": False, "tensorboard": False,
            "keep_last": 5, "save_every": 3, "schedule": "constant"}
    return TrainConfig(**{**base, **kw})


def run(out, cfg, hooks, resume=False, model_seed=0):
    torch.manual_seed(model_seed)
    trainer = Trainer(TinyRegressor(), cfg, SyntheticLoader(batch_size=cfg.batch_size), out, hooks=hooks)
    return trainer, trainer.fit(resume=resume)


def test_hooks_run_after_every_step(tmp_path):
    ema, plain = EmaHook(), Stateless()
    run(tmp_path, config(steps=5), [ema, plain])
    assert plain.steps == [1, 2, 3, 4, 5] and ema.calls == 5
    entry = json.loads((tmp_path / "checkpoints" / "step-5" / "rank-0.json").read_text())["hooks"]
    assert [e["name"] for e in entry] == ["ema"]  # stateless hooks store nothing


def test_hook_state_resumes_exactly(tmp_path):
    full = EmaHook()
    run(tmp_path / "full", config(), [full])
    run(tmp_path / "part", config(steps=6), [EmaHook()])
    resumed = EmaHook(decay=0.5)  # the saved decay wins, as every saved value does
    run(tmp_path / "part", config(), [resumed], resume=True, model_seed=99)
    assert resumed.calls == full.calls == 8 and resumed.decay == 0.9
    assert resumed.seen_steps == full.seen_steps == list(range(1, 9))
    assert torch.equal(resumed.ema, full.ema)


def test_resume_with_other_stateful_hooks_is_refused(tmp_path):
    run(tmp_path, config(steps=3), [EmaHook()])
    with pytest.raises(CheckpointError, match=r"hooks \['ema'\] but this run has stateful hooks \[\]"):
        run(tmp_path, config(steps=6), [Stateless()], resume=True)
