"""Run under torchrun (or alone): train the tiny stand-in with a fixed global batch; used by test_distributed."""

from __future__ import annotations

import json
import os
import sys

import torch

from modaloom import collectives
from modaloom.train import distributed as dist_utils
from modaloom.train.config import TrainConfig
from modaloom.train.parallelize import parallelize
from modaloom.train.steps import gather_outputs
from modaloom.train.trainer import Trainer
from tests.train.standins import SyntheticLoader, TinyRegressor

GLOBAL_BATCH = 8


def check_gather(info: dist_utils.DistInfo) -> dict:
    """gather_features: every rank sees all rows; the gradient matches the one-process gradient."""
    rows = torch.arange(6, dtype=torch.float32).reshape(3, 2) + 10 * info.rank
    x = rows.clone().requires_grad_(True)
    gathered = collectives.gather_features(x)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape)
    (gathered * weights).sum().backward()
    return {"gathered": gathered.detach().tolist(), "grad": x.grad.tolist()}


def check_eval_gather(info: dist_utils.DistInfo) -> dict:
    """Rank r holds batches of 1 and 2 + r examples; every rank receives all of them, in rank order."""
    base = 100 * info.rank
    parts = [{"id": torch.tensor([base]), "tag": [f"r{info.rank}"]},
             {"id": torch.arange(base + 1, base + 3 + info.rank), "tag": [f"r{info.rank}"] * (2 + info.rank)}]
    gathered = gather_outputs(parts)
    return {"ids": gathered["id"].tolist(), "tags": gathered["tag"]}


def check_inference_parallelize(info: dist_utils.DistInfo, mode: str) -> float:
    """A frozen model (no trainable parameter) parallelizes and runs: no DDP wrapper refusing it."""
    torch.manual_seed(0)
    model = TinyRegressor(dropout=0.0).requires_grad_(False).eval()
    placed = parallelize(model, TrainConfig(parallel=mode), info)
    with torch.no_grad():
        batch = SyntheticLoader(batch_size=2).global_batch(0, 0)
        return float(placed.forward(batch).loss)


def main(out: str, mode: str) -> None:
    info = dist_utils.setup()
    torch.manual_seed(0)
    model = TinyRegressor(dropout=0.0)
    cfg = TrainConfig(steps=6, batch_size=GLOBAL_BATCH // info.world_size, lr=1e-2, progress=False,
                      tensorboard=False, log_every=2, parallel=mode, keep_last=1)
    loader = SyntheticLoader(batch_size=cfg.batch_size, rank=info.rank, world_size=info.world_size)
    summary = Trainer(model, cfg, loader, out, info=info).fit()
    report = {"rank": info.rank, "gather": check_gather(info), "steps": summary["steps"],
              "eval_gather": check_eval_gather(info), "inference_loss": check_inference_parallelize(info, mode)}
    with open(f"{out}/report-{info.rank}.json", "w") as fh:
        json.dump(report, fh)
    dist_utils.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "auto")
    # Every result is written and the process group is destroyed. Skip the interpreter's teardown: under
    # FSDP2 + gloo a C++ thread destructor there occasionally aborts the process (SIGABRT, "terminate called
    # without an active exception") after the work is done, which would fail the launch for no reason of ours.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
