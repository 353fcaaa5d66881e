"""The environment of a process a test starts: this checkout's package (and tests) first on the path."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(*, tests: bool = True, threads: int | None = 1, cpu: bool = False, **extra: str) -> dict[str, str]:
    """``os.environ`` with ``src`` (and the checkout root, for ``tests.*`` scripts) put before any PYTHONPATH
    already set, which is kept: on a machine whose packages come through PYTHONPATH the child still finds them.
    ``threads``: OMP_NUM_THREADS (None leaves it). ``cpu``: hide the GPUs, for multi-process tests written for
    gloo on the CPU (one GPU cannot hold two NCCL ranks)."""
    paths = [str(ROOT / "src"), *([str(ROOT)] if tests else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env
