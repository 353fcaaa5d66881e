"""The data section of a config (owned by the data pipeline)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """How training batches are drawn from a preprocessed dataset directory."""

    processor: str = ""
    seq_length: int = 128
