"""Two gloo processes keep identical moco queues and momentum copies, equal to one process's on the same batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.child_env import child_env

ROOT = Path(__file__).resolve().parents[2]


def launch(out: Path, nproc: int) -> None:
    env = child_env(cpu=True)
    script = ["-m", "tests.train.moco_dist_script", str(out)]
    cmd = [sys.executable, *script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *script]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_ranks_hold_the_same_queues_as_one_process(tmp_path):
    launch(tmp_path / "two", 2)
    launch(tmp_path / "one", 1)
    rank0, rank1 = (load_file(str(tmp_path / "two" / f"hook-{r}.safetensors")) for r in (0, 1))
    single = load_file(str(tmp_path / "one" / "hook-0.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # every rank enqueued the same gathered rows
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)  # fp32 sums in another order
    assert rank0["pointer"].tolist() == [16 % 5, 5]  # 4 steps of 4 keys wrapped a queue of 5
