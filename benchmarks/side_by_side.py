"""What every side-by-side benchmark needs: run a command measured (wall time, peak RSS of its whole process
tree, the load average while it ran), the same threads and ``src`` for both tools, and interleaved repeats.

TencentPretrain is never fetched or installed from here: ``tp_problem`` says what is missing and
``TP_SETUP`` how to make the documented checkout (its public repository at commit ed79843, in its own venv).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tencentpretrain"
ZH_VOCAB = SHARED / "models" / "google_zh_vocab.txt"
BOOK = SHARED / "datasets" / "book_review"
TP_CHECKPOINT = SHARED / "checkpoints" / "bert_tiny_book_review_1k.bin"  # TencentPretrain's 1,000-step tiny BERT
TP_CONFIG = SHARED / "checkpoints" / "bert_tiny_config.json"
TP_COMMIT = "ed79843"
TP_SETUP = f"""TencentPretrain is needed for the side-by-side figures; make the documented checkout (outside this repository):
    git clone https://github.com/Tencent/TencentPretrain /opt/tencentpretrain
    git -C /opt/tencentpretrain checkout {TP_COMMIT}
    python -m venv /opt/tp-venv && /opt/tp-venv/bin/pip install torch==2.13.0 numpy six packaging regex
then pass --tp /opt/tencentpretrain --tp-python /opt/tp-venv/bin/python (the same torch as modaloom's venv)."""


@dataclass
class Measured:
    """One command's wall seconds, peak RSS (MiB, the whole process tree), mean 1-minute load and output."""

    wall: float
    peak_rss_mb: float
    load: float
    output: str = field(default="", repr=False)


def tp_problem(tp: Path | None, tp_python: str) -> str | None:
    """Why ``tp`` cannot be run (no checkout, not TencentPretrain, no interpreter), or None when it can."""
    if tp is None:
        return "no TencentPretrain checkout given (--tp DIR)"
    for name in ("preprocess.py", "pretrain.py", "finetune/run_classifier.py", "tencentpretrain"):
        if not (tp / name).exists():
            return f"{tp} is not a TencentPretrain checkout: {name} is missing"
    if not Path(tp_python).is_file():
        return f"--tp-python {tp_python} does not exist"
    return None


def child_env(threads: int) -> dict[str, str]:
    """This checkout's ``src`` first on the path, and ``threads`` OpenMP/MKL threads (torch follows them)."""
    path = f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and all its descendants (0 for those that ended while being read)."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def run_measured(cmd: Sequence[str], threads: int, cwd: Path | None = None, interval: float = 0.02,
                 env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd`` to completion with ``threads`` threads (and ``env`` added to its environment), sampling its
    process tree's RSS every ``interval`` seconds and the load average every second; fails loudly with the tail
    of its output."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env={**child_env(threads), **(env or {})}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    peak, loads, last_load = 0, [os.getloadavg()[0]], start
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss(root))
        now = time.perf_counter()
        if now - last_load >= 1.0:
            loads.append(os.getloadavg()[0])
            last_load = now
        time.sleep(interval)
    wall = time.perf_counter() - start
    reader.join()
    output = "".join(chunks)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    return Measured(wall, peak / 2**20, statistics.fmean(loads), output)


def interleaved(runs: dict[str, Callable[[], Measured]], repeat: int) -> dict[str, list[Measured]]:
    """Each run ``repeat`` times, alternating which goes first each round, so that a change in the machine's
    load falls on both sides alike."""
    results: dict[str, list[Measured]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(repeat):
        for name in names if index % 2 == 0 else names[::-1]:
            print(f"[{name}] run {index + 1}/{repeat}", file=sys.stderr, flush=True)
            results[name].append(runs[name]())
    return results


def median(runs: list[Measured]) -> Measured:
    """The run of median wall time (its own RSS and load kept with it)."""
    ordered = sorted(runs, key=lambda m: m.wall)
    return ordered[(len(ordered) - 1) // 2]


def modaloom_command(*args: str) -> list[str]:
    """A ``modaloom`` command line run by this interpreter (``child_env`` puts this checkout's src first)."""
    return [sys.executable, "-m", "modaloom.cli.main", *args]
