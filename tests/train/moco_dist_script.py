"""Run under torchrun (or alone): a few moco steps on a fixed global batch; each rank writes its hook state."""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

from modaloom.train import distributed as dist_utils
from modaloom.train.config import TrainConfig
from modaloom.train.hooks import part_hooks
from modaloom.train.trainer import Trainer
from tests.train.test_moco_resume import ClipLoader, moco_model

GLOBAL_BATCH = 4


class BlockLoader(ClipLoader):
    """Rank r takes rows r*B..(r+1)*B-1 of the global batch, so rows gathered in rank order are in batch order."""

    def global_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        natural = super().global_batch(epoch, index)
        order = torch.arange(GLOBAL_BATCH).reshape(self.world_size, -1).T.flatten()  # rows r::W are a block
        return {k: v[order] for k, v in natural.items()}


def main(out: str) -> None:
    info = dist_utils.setup()
    model = moco_model(0, dropout=0.0)
    hook = part_hooks(model)[0]
    cfg = TrainConfig(steps=4, batch_size=GLOBAL_BATCH // info.world_size, lr=1e-2, progress=False,
                      tensorboard=False, log_every=0, parallel="ddp" if info.world_size > 1 else "none",
                      keep_last=1, schedule="constant")
    loader = BlockLoader(batch_size=cfg.batch_size, length=7, rank=info.rank, world_size=info.world_size)
    Trainer(model, cfg, loader, out, info=info, hooks=[hook]).fit()
    state = {f"queue{i}": q.buffer.cpu() for i, q in enumerate(hook.queues)}
    state["pointer"] = torch.tensor([hook.queues[0].pointer, hook.queues[0].filled])
    state.update({f"tower.{k}": v.detach().cpu().contiguous() for k, v in hook.towers[1].state_dict().items()})
    save_file(state, f"{out}/hook-{info.rank}.safetensors")
    dist_utils.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
