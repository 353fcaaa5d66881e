"""``eager_optimizer_class``: torch's optimizers without torch.compile's wrappers give the same updates, keep
their hooks and state layout, and never import torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modaloom.train.config import TrainConfig
from modaloom.train.optim import AdamWNoBiasCorrection, build_optimizer, eager_optimizer_class
from tests.child_env import child_env
from tests.train.standins import TinyRegressor

SRC = Path(__file__).resolve().parents[2] / "src"
CASES = [(torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1, "fused": True}),
         (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1, "foreach": True}),
         (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "foreach": True}),
         (torch.optim.Adafactor, {"lr": 0.01, "foreach": True}),
         (AdamWNoBiasCorrection, {"lr": 0.01, "weight_decay": 0.1})]


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)  # the same dropout masks for both runs
    for _ in range(steps):
        batch = {"input_ids": torch.randint(0, 50, (4, 3), generator=gen), "target": torch.randn(4, generator=gen)}
        model(batch).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize(("cls", "kwargs"), CASES, ids=["adamw-fused", "adamw-foreach", "sgd", "adafactor",
                                                        "adamw-no-bias-correction"])
def test_same_updates_state_and_hooks_as_torch(cls, kwargs):
    torch.manual_seed(0)
    ours_model = TinyRegressor()
    torch_model = copy.deepcopy(ours_model)
    ours = eager_optimizer_class(cls)(ours_model.parameters(), **kwargs)
    reference = cls(torch_model.parameters(), **kwargs)
    assert isinstance(ours, cls) and type(ours) is not cls
    calls = []
    ours.register_step_post_hook(lambda opt, args, kw: calls.append(1))
    train(ours_model, ours)
    train(torch_model, reference)
    assert calls == [1, 1, 1]
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        assert torch.equal(a, b)
    state = ours.state_dict()
    assert state.keys() == reference.state_dict().keys()
    reloaded = cls(copy.deepcopy(ours_model).parameters(), **kwargs)
    reloaded.load_state_dict(state)  # the layout is torch's own
    back = eager_optimizer_class(cls)(ours_model.parameters(), **kwargs)
    back.load_state_dict(reference.state_dict())
    assert all(p.grad is None for p in ours_model.parameters())


def test_compiled_runs_keep_torchs_class():
    model = TinyRegressor()
    assert type(build_optimizer(model, TrainConfig(compile=True))) is torch.optim.AdamW
    assert type(build_optimizer(model, TrainConfig())) is eager_optimizer_class(torch.optim.AdamW)
    assert eager_optimizer_class(torch.optim.AdamW) is eager_optimizer_class(torch.optim.AdamW)


SCRIPT = """
import sys
import torch
from modaloom.train.config import TrainConfig
from modaloom.train.optim import build_optimizer
from tests.train.standins import TinyRegressor
model = TinyRegressor()
opt = build_optimizer(model, TrainConfig(optimizer=sys.argv[1], lr=0.01))
schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
for _ in range(2):
    model({"input_ids": torch.randint(0, 50, (4, 3)), "target": torch.randn(4)}).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); schedule.step(); opt.zero_grad()
opt.load_state_dict(opt.state_dict())
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_an_eager_run_never_imports_dynamo(name):
    root = SRC.parent
    env = child_env(threads=None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, name], env=env, capture_output=True, text=True, check=True,
                          cwd=root)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
