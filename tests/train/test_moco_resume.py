"""A moco run resumes exactly: N steps == k steps, stop, resume to N (weights, momentum copies and queues)."""

from __future__ import annotations

import json

import torch

from modaloom.model import build_model
from modaloom.train.config import TrainConfig
from modaloom.train.hooks import part_hooks
from modaloom.train.trainer import Trainer
from tests.model.test_parts_dual import clip_config
from tests.train.standins import SyntheticLoader


class ClipLoader(SyntheticLoader):
    """Deterministic caption ids (eos = 29 at position 4) and images per (seed, epoch, index), resumable."""

    def global_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch * 1009 + index)
        total = self.batch_size * self.world_size
        ids = torch.randint(1, 20, (total, 6), generator=g)
        ids[:, 4] = 29
        return {"input_ids": ids, "pixel_values": torch.randn(total, 3, 8, 8, generator=g)}


def moco_model(seed: int, dropout: float = 0.1):
    torch.manual_seed(seed)
    cfg = clip_config()
    cfg["targets"][0].update(type="moco", queue_size=5, momentum=0.8)
    for stream in cfg["encoder"]["streams"]:
        stream["dropout"] = dropout  # with dropout, the RNG state must resume too
    return build_model(cfg)


def train(out, steps, resume=False, seed=0):
    cfg = TrainConfig(steps=8, batch_size=3, lr=1e-2, log_every=0, progress=False, tensorboard=False,
                      keep_last=5, save_every=steps, schedule="constant")
    model = moco_model(seed)
    hooks = part_hooks(model)
    trainer = Trainer(model, cfg, ClipLoader(batch_size=3, length=7), out, hooks=hooks)
    trainer.cfg.steps = steps
    trainer.fit(resume=resume)
    return trainer, hooks[0]


def test_resume_continues_exactly(tmp_path):
    full, full_hook = train(tmp_path / "full", 8)
    train(tmp_path / "part", 5)
    saved = json.loads((tmp_path / "part" / "checkpoints" / "step-5" / "rank-0.json").read_text())["hooks"]
    assert [e["name"] for e in saved] == ["momentum_contrast:moco"]
    resumed, hook = train(tmp_path / "part", 8, resume=True, seed=7)  # another start: the checkpoint wins
    assert resumed.step == 8
    for key, value in full.raw_model.state_dict().items():
        assert torch.equal(resumed.raw_model.state_dict()[key], value), key
    for tower, other in zip(full_hook.towers, hook.towers, strict=True):
        for (name, a), b in zip(tower.state_dict().items(), other.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    for queue, other in zip(full_hook.queues, hook.queues, strict=True):
        assert torch.equal(queue.buffer, other.buffer)
        assert (queue.pointer, queue.filled) == (other.pointer, other.filled) == (24 % 5, 5)  # wrapped
    # the copy trailed the model: it is neither the start nor the trained weights
    start = moco_model(0)
    emb = dict(full_hook.towers[0].named_parameters())
    name, trained = next(iter(full.raw_model.embedding.named_parameters()))
    assert not torch.equal(emb[name], trained) and not torch.equal(emb[name], dict(start.embedding.named_parameters())[name])
