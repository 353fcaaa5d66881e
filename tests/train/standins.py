"""Tiny stand-ins for the model and the loader, following the Trainer's interfaces (tests only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Output:
    loss: torch.Tensor | None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class TinyRegressor(nn.Module):
    """Embedding -> two blocks in a ModuleList (with dropout) -> norm -> linear; MSE against ``target``."""

    def __init__(self, vocab: int = 50, hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout)) for _ in range(2)
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        x = self.embed(batch["input_ids"]).mean(dim=1)
        for block in self.blocks:
            x = x + block(x)
        pred = self.head(self.norm(x)).squeeze(-1) * batch.get("scale", torch.ones(()))
        loss = ((pred - batch["target"]) ** 2).mean()
        return Output(loss, {"reg_loss": loss.detach(), "reg_count": torch.tensor(float(len(pred)))})


class SyntheticLoader:
    """Deterministic batches per (seed, epoch, index), an epoch of ``length`` batches, resumable position."""

    def __init__(self, batch_size: int = 8, length: int = 7, seq: int = 6, seed: int = 0, vocab: int = 50,
                 rank: int = 0, world_size: int = 1, poison: dict[int, float] | None = None) -> None:
        self.batch_size, self.length, self.seq, self.seed, self.vocab = batch_size, length, seq, seed, vocab
        self.rank, self.world_size = rank, world_size
        self.poison = poison or {}  # global batch number -> value multiplying the prediction
        self.epoch = 0
        self.position = 0
        self.delivered = 0

    def global_batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """The batch of all ranks together: rank r takes rows r::world_size."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch * 1009 + index)
        total = self.batch_size * self.world_size
        ids = torch.randint(0, self.vocab, (total, self.seq), generator=g)
        target = torch.randn(total, generator=g)
        return {"input_ids": ids, "target": target}

    def __iter__(self):
        epoch = self.epoch
        while self.position < self.length:
            full = self.global_batch(epoch, self.position)
            batch = {k: v[self.rank::self.world_size].clone() for k, v in full.items()}
            if self.delivered in self.poison:
                batch["scale"] = torch.tensor(self.poison[self.delivered])
            self.position += 1
            self.delivered += 1
            yield batch
        self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "delivered": self.delivered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.delivered = state["epoch"], state["position"], state["delivered"]
