"""SIGKILL at random steps, resume each time: the final weights equal an uninterrupted run's, and every
checkpoint directory on disk is complete at every moment we look."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from modaloom.train.checkpoint import STEP_DIR, complete_checkpoints, read_json
from modaloom.weights import read_tensors
from tests.child_env import child_env
from tests.train.data_helpers import tiny_bert_config, write_dataset

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


def command(config: Path, data: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "modaloom.cli.main", "pretrain", "--config", str(config), "--data", str(data),
           "--out", str(out), "train.save_every=3", "train.log_every=1", "train.keep_last=2",
           "data.num_workers=1"]
    return cmd + (["--resume"] if resume else [])


def env() -> dict[str, str]:
    return child_env()


def logged_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def assert_checkpoints_intact(out: Path) -> None:
    """Every directory named step-N is complete and readable (temp and half-deleted dirs may exist)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return
    named = [p for p in root.iterdir() if STEP_DIR.match(p.name)]
    assert len(named) == len(complete_checkpoints(out)), sorted(p.name for p in root.iterdir())
    for path in named:
        for name in ("model.safetensors", "optimizer.safetensors", "rank-0.safetensors"):
            read_tensors(path / name)
        for name in ("optimizer.json", "rank-0.json", "trainer_state.json", "config.json"):
            read_json(path / name)


def test_sigkill_at_random_steps_then_resume(tmp_path):
    rng = random.Random(1234)
    data = write_dataset(tmp_path / "data", documents=80)
    config = tiny_bert_config(tmp_path / "bert.yaml", layers=2, train={"steps": STEPS, "schedule": "cosine",
                                                                       "warmup_steps": 4})
    full = tmp_path / "full"
    subprocess.run(command(config, data, full, False), env=env(), check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    kills, target = 0, 0
    while kills < 5:
        target = min(STEPS - 3, max(target + 2, logged_step(out)) + rng.randint(1, 6))
        proc = subprocess.Popen(command(config, data, out, resume=kills > 0), env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while logged_step(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.random() * 0.05)  # anywhere inside the next step or save
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert_checkpoints_intact(out)
    subprocess.run(command(config, data, out, True), env=env(), check=True, capture_output=True, timeout=300)
    assert_checkpoints_intact(out)

    a = load_file(str(full / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((out / "summary.json").read_text())["steps"] == STEPS
