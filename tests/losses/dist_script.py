"""Run under torchrun (gloo, CPU): each rank writes our siglip / infonce and open_clip's on its rows."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.losses.reference import ROWS, features, loss_and_grads, open_clip_loss, ours, reference


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    per_rank = ROWS // size
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    module = open_clip_loss()
    report = {}
    for name in ("siglip", "infonce"):
        leaves = features(rows)
        report[name] = loss_and_grads(ours(name, leaves), leaves)
        leaves = features(rows)
        report[f"open_clip_{name}"] = loss_and_grads(reference(name, module, leaves, rank, size), leaves)
    torch.save(report, out / f"rank-{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
