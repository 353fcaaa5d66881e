"""``train/memory.py``: freed tensor buffers leave the resident set when the mmap threshold is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modaloom.errors import ConfigError
from modaloom.train.config import TrainConfig
from modaloom.train.memory import set_mmap_threshold
from tests.child_env import child_env

SRC = Path(__file__).resolve().parents[2] / "src"
SCRIPT = """
import sys, psutil, torch
from modaloom.train.memory import set_mmap_threshold
def rss(): return psutil.Process().memory_info().rss / 2**20
big = torch.ones(6 << 20); del big  # 24 MiB freed: glibc raises its own threshold past 4 MiB buffers
if sys.argv[1] == "on":
    assert set_mmap_threshold(1)
base = rss()
buffers, pins = [], []
for _ in range(16):
    buffers.append(torch.ones(1 << 20))  # 4 MiB each
    pins.append(torch.ones(64))  # small allocations after each keep the heap from shrinking
del buffers
print(round(rss() - base))
"""


def retained_mb(mode: str) -> int:
    env = child_env(tests=False, threads=None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc only")
def test_freed_buffers_leave_the_resident_set_only_with_the_threshold():
    on = retained_mb("on")
    assert on <= 8
    assert retained_mb("off") >= on + 12  # glibc's default keeps part of the 64 MiB (how much varies)


def test_zero_leaves_the_default():
    assert set_mmap_threshold(0) is False


@pytest.mark.parametrize("value", [-1, 33])
def test_the_threshold_is_checked(value):
    with pytest.raises(ConfigError, match="train.mmap_threshold_mb must be in"):
        TrainConfig(mmap_threshold_mb=value).validate()
