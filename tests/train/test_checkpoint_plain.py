"""A single-process checkpoint is built without the DCP state-dict API (which imports torch._dynamo and sympy):
the same model and optimizer state as that API gives, and it loads back the same way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint.state_dict as dcp_state

from modaloom.lora import apply_lora
from modaloom.model import build_model
from modaloom.tasks import load_job_config
from modaloom.train import checkpoint as ckpt
from modaloom.train.config import LoraSettings, TrainConfig
from modaloom.train.optim import build_optimizer
from modaloom.zoo import zoo_path
from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]


def trained_bert(lora: bool = False):
    cfg = load_job_config(str(zoo_path("bert/tiny")), ["model.embedding.vocab_size=60", "model.encoder.layers_num=1"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if lora:
        apply_lora(model, LoraSettings(r=2, target_modules="all-linear"))
    optimizer = build_optimizer(model, TrainConfig(lr=0.01))
    ids = torch.randint(5, 60, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = 7
    batch = {"input_ids": ids, "segment_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
             "mlm_labels": labels, "sp_labels": torch.tensor([0, 1])}
    model(batch).loss.backward()
    optimizer.step()
    return model, optimizer


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_plain_state_equals_the_dcp_apis_and_loads_back():
    for lora in (False, True):
        model, optimizer = trained_bert(lora)
        assert ckpt.is_plain(model)
        assert same(ckpt.model_state(model), dcp_state.get_model_state_dict(model))
        state = ckpt.optimizer_state(model, optimizer)
        assert same(state, dcp_state.get_optimizer_state_dict(model, optimizer))
        assert any(".weight" in name for name in state["state"])  # keyed by name, as DCP keys it
        other_model, other = trained_bert(lora)
        for p in other_model.parameters():
            torch.nn.init.zeros_(p.data)
        other.state.clear()
        other_model.load_state_dict(model.state_dict())
        ckpt.load_optimizer_state(other_model, other, state)
        assert same(ckpt.optimizer_state(other_model, other), state)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch.compile's import
def test_compiled_models_use_the_dcp_api():
    model, _ = trained_bert()
    assert not ckpt.is_plain(torch.compile(model))


SCRIPT = """
import sys, tempfile
sys.path.insert(0, sys.argv[1])
from modaloom.train.config import LoraSettings, TrainConfig
from modaloom.train.trainer import Trainer
from standins import SyntheticLoader, TinyRegressor
out = tempfile.mkdtemp() + "/run"
Trainer(TinyRegressor(), TrainConfig(steps=3, batch_size=2, save_every=1, progress=False), SyntheticLoader(), out).fit()
Trainer(TinyRegressor(), TrainConfig(steps=5, batch_size=2, save_every=1, progress=False), SyntheticLoader(), out).fit(
    resume=True)
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""


def test_an_eager_run_that_saves_and_resumes_never_imports_dynamo():
    env = child_env(tests=False, threads=None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "tests" / "train")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
