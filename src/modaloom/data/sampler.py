"""Which records each rank reads, in which order, every epoch; and the position to resume from.

Order: every epoch draws a fresh permutation of the split's records (all shards together) from
``numpy.random.default_rng([seed, epoch])``. Every rank computes the same permutation and keeps only its
own slice, so ranks never read each other's records and nothing needs to be communicated:

* training (``drop_last``): the permutation is cut to a multiple of ``world_size`` and rank r takes the
  contiguous block ``[r * m, (r + 1) * m)``: equal counts per rank (so DDP steps stay in lock-step); the
  fewer-than-``world_size`` records cut off differ from epoch to epoch.
* evaluation (no ``drop_last``): rank r takes positions ``r, r + world_size, ...``: every record is read
  exactly once over all ranks; counts differ by at most one.

Resuming needs only (seed, epoch, records consumed in the epoch by this rank): the permutation is
re-derived, never replayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from modaloom.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """A contiguous range of global record indices ``[start, stop)``: the train or held-out part."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def split_records(num_records: int, holdout: float, part: str) -> Split:
    """Deterministic train / held-out split: the held-out part is the *last* records of the dataset.

    ``holdout`` >= 1 is a record count, 0 < ``holdout`` < 1 a fraction (rounded, at least one record),
    0 means no held-out part. ``part`` is "train", "heldout" or "all".
    """
    if holdout < 0:
        raise ConfigError(f"holdout must be >= 0 (a count or a fraction), got {holdout}")
    if holdout == 0:
        held = 0
    elif holdout < 1:
        held = max(1, round(holdout * num_records))
    else:
        if holdout != int(holdout):
            raise ConfigError(f"holdout {holdout} >= 1 must be a whole number of records")
        held = int(holdout)
    if held >= num_records and part == "train":
        raise ConfigError(f"holdout {holdout} leaves no training records out of {num_records}")
    held = min(held, num_records)
    if part == "train":
        return Split(0, num_records - held)
    if part == "heldout":
        if held == 0:
            raise ConfigError("the held-out split is empty: set data holdout to a count or a fraction")
        return Split(num_records - held, num_records)
    if part == "all":
        return Split(0, num_records)
    raise ConfigError(f"unknown split {part!r}; valid choices: all, heldout, train")


@dataclass(frozen=True)
class RankOrder:
    """How one rank walks a split: seeded shuffling per epoch, its own disjoint slice of the records."""

    split: Split
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    drop_last: bool = True

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is not within world size {self.world_size}")
        if self.drop_last and len(self.split) < self.world_size:
            raise ConfigError(f"{len(self.split)} records cannot feed {self.world_size} ranks")

    def records_per_rank(self) -> int:
        """How many records this rank reads per epoch."""
        total = len(self.split)
        if self.drop_last:
            return total // self.world_size
        return len(range(self.rank, total, self.world_size))

    def indices(self, epoch: int) -> np.ndarray:
        """Global record indices this rank reads in ``epoch``, in order (int64)."""
        total = len(self.split)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(total)
        else:
            order = np.arange(total, dtype=np.int64)
        if self.drop_last:
            per_rank = total // self.world_size
            mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        else:
            mine = order[self.rank :: self.world_size]
        return mine.astype(np.int64) + self.split.start


def fixed_size_batches(
    indices: np.ndarray, start: int, batch_size: int, drop_last: bool
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (batch indices, position after the batch) from position ``start`` of ``indices``."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    position = start
    while position < len(indices):
        end = position + batch_size
        if end > len(indices) and drop_last:
            return
        batch = indices[position:end]
        position += len(batch)
        yield batch, position


def packed_batches(
    indices: np.ndarray, lengths: np.ndarray, start: int, capacity: int, drop_last: bool
) -> Iterator[tuple[np.ndarray, int]]:
    """Greedy packing plan: consecutive records whose lengths sum to at most ``capacity`` tokens form a
    batch (a record longer than ``capacity`` goes alone and is cut by the collate). ``lengths`` is indexed
    by global record index. Yields (batch indices, position after the batch)."""
    position = start
    total = len(indices)
    while position < total:
        used = 0
        end = position
        while end < total:
            length = int(lengths[indices[end]])
            if end > position and used + length > capacity:
                break
            used += length
            end += 1
        if end >= total and drop_last and used < capacity:
            return
        yield indices[position:end], end
        position = end
