"""Momentum (EMA) copies of modules and fixed-size feature queues: the state of MoCo-style objectives.

``ema_update`` moves a frozen copy's parameters towards the trained ones after each optimizer step (MoCo, He et
al. 2020; WenLan/BriVL, Huo et al. 2021); a ``FeatureQueue`` is a ring buffer of past key features used as
extra negatives. Both are plain tensors with ``state_dict`` / ``load_state_dict`` so that an after-step hook
(``train/hooks.py``) can checkpoint them and a resumed run continues exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from modaloom.errors import CheckpointError, ConfigError


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` in eval mode (no dropout in the key encoder), for ``ema_update``."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.eval()


@torch.no_grad()
def ema_update(momentum: nn.Module, online: nn.Module, decay: float) -> None:
    """``m <- decay * m + (1 - decay) * p`` for every parameter; buffers are copied as they are."""
    pairs = list(zip(momentum.parameters(), online.parameters(), strict=True))
    for m, p in pairs:
        m.mul_(decay).add_(p.detach().to(m.dtype), alpha=1.0 - decay)
    for mb, ob in zip(momentum.buffers(), online.buffers(), strict=True):
        mb.copy_(ob)


class FeatureQueue:
    """The last ``size`` rows pushed (``size``, ``dim``), a write pointer and how many rows are filled.

    ``features()`` is the filled part only, so an empty queue adds no negatives (no random start-up rows).
    Push the same rows on every rank (gathered first) and every rank holds the same queue.
    """

    def __init__(self, size: int, dim: int) -> None:
        if size < 0:
            raise ConfigError(f"a feature queue needs size >= 0, got {size}")
        self.buffer = torch.zeros(size, dim)
        self.pointer = 0
        self.filled = 0

    @property
    def size(self) -> int:
        return self.buffer.shape[0]

    def to(self, device: torch.device) -> FeatureQueue:
        self.buffer = self.buffer.to(device)
        return self

    def features(self) -> torch.Tensor:
        """The rows held so far (``filled``, ``dim``), in buffer order."""
        return self.buffer[: self.filled]

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        """Write ``rows`` at the pointer, wrapping around; with more rows than ``size`` the last ones stay."""
        if self.size == 0:
            return
        rows = rows.detach().to(self.buffer)
        n = rows.shape[0]
        skip = max(0, n - self.size)  # rows overwritten within this push: only the last ``size`` land
        start = (self.pointer + skip) % self.size
        kept = rows[skip:]
        first = min(kept.shape[0], self.size - start)
        self.buffer[start:start + first] = kept[:first]
        self.buffer[: kept.shape[0] - first] = kept[first:]
        self.pointer = (self.pointer + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def state_dict(self) -> dict[str, Any]:
        return {"features": self.buffer, "pointer": self.pointer, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["features"]
        if tuple(saved.shape) != tuple(self.buffer.shape):
            raise CheckpointError(f"the saved feature queue is {tuple(saved.shape)} but this run's is "
                                  f"{tuple(self.buffer.shape)}; resume with the same queue_size and feature_size")
        self.buffer.copy_(saved)
        self.pointer, self.filled = int(state["pointer"]), int(state["filled"])
