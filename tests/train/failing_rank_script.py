"""Run under torchrun with 2 processes: rank 1's job raises while rank 0 waits in a collective; used by
test_elastic to check that the failure ends the job instead of hanging it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from modaloom.errors import DataError
from modaloom.tasks.base import JobPaths, Task
from modaloom.train.distributed import DistInfo


class FailsOnRankOne(Task):
    name = "fails_on_rank_one"

    def train(self, info: DistInfo) -> dict[str, Any]:
        if info.rank == 1:
            raise DataError("rank 1 found a bad record")
        dist.all_reduce(torch.ones(1))  # rank 1 never joins: a hang unless its failure ends the job
        return {}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    FailsOnRankOne(cfg=None, paths=JobPaths(data=out.parent / "data", out=out)).run()  # type: ignore[arg-type]
