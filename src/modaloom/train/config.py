"""The train section of a config (owned by the training engine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimisation and run settings."""

    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    seed: int = 7
