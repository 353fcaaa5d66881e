"""Run under torchrun (or alone): train the tiny stand-in towards ``steps`` with a fixed global batch,
resuming the latest checkpoint of ``out``, and stop (saving) after step ``stop_at`` when it is > 0;
used by test_sharded_checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from modaloom.train import distributed as dist_utils
from modaloom.train.config import TrainConfig
from modaloom.train.trainer import Trainer
from tests.train.standins import SyntheticLoader, TinyRegressor

GLOBAL_BATCH = 8


def train(out: str | Path, steps: int, mode: str, checkpoint_format: str, stop_at: int = 0,
          info: dist_utils.DistInfo | None = None) -> dict:
    info = info or dist_utils.current()
    torch.manual_seed(0)
    model = TinyRegressor(dropout=0.0)
    # the per-process batch shrinks as processes are added: every step sees the same 8 rows in any world size
    cfg = TrainConfig(steps=steps, batch_size=GLOBAL_BATCH // info.world_size, lr=1e-2, progress=False,
                      tensorboard=False, log_every=1, parallel=mode, keep_last=5,
                      checkpoint_format=checkpoint_format)
    loader = SyntheticLoader(batch_size=cfg.batch_size, rank=info.rank, world_size=info.world_size)

    def stop(trainer: Trainer) -> None:  # as SIGTERM would: the step finishes, is saved, the run returns
        if trainer.step == stop_at:
            trainer.stop_signal = signal.SIGTERM

    return Trainer(model, cfg, loader, out, info=info, hooks=[stop]).fit(resume=True)


if __name__ == "__main__":
    dist_info = dist_utils.setup()
    train(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), dist_info)
    dist_utils.teardown()
    # as in dist_script: skip the interpreter's teardown, which can abort under FSDP2 + gloo after the work
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
