"""Which records each rank reads, in which order, every epoch; and the position to resume from.

Order: every epoch draws a fresh permutation of the split's records (all shards together) from
``numpy.random.default_rng([seed, epoch])``: the epoch's *global order*, the same on every rank and for
every number of ranks. Ranks take interleaved slices of it, so nothing needs to be communicated: rank r
reads global positions ``start + r, start + r + world_size, ...``, where ``start`` (0 unless a run was
resumed on another number of processes) is how many records of the global order were consumed before.

* training (``drop_last``): each rank reads ``(len - start) // world_size`` records, equal counts so that
  DDP steps stay in lock-step; the fewer-than-``world_size`` records at the end of the global order are not
  read that epoch (they differ from epoch to epoch). With fixed-size batches, global batch k is the
  contiguous run ``[k * world_size * batch, (k + 1) * world_size * batch)`` of the global order, rank r
  holding its rows ``r::world_size``.
* evaluation (no ``drop_last``): the same interleaving, uncut: every record is read exactly once over all
  ranks; counts differ by at most one.

Resuming needs only (seed, epoch, start, records consumed by this rank since ``start``): the permutation
is re-derived, never replayed. When every rank has consumed ``p`` records (fixed-size batches), the global
order is consumed exactly up to ``start + world_size * p``: a run resumed on another number of processes
continues from there (``resharded_start``), so each record of the epoch is read once in all.
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

    def records_per_rank(self, start: int = 0) -> int:
        """How many records this rank reads in an epoch whose first ``start`` global records are consumed."""
        remaining = max(len(self.split) - start, 0)
        if self.drop_last:
            return remaining // self.world_size
        return len(range(self.rank, remaining, self.world_size))

    def indices(self, epoch: int, start: int = 0) -> np.ndarray:
        """Global record indices this rank reads in ``epoch`` from global position ``start`` on (int64)."""
        total = len(self.split)
        if not 0 <= start <= total:
            raise ConfigError(f"global start {start} is outside the split's {total} records")
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(total)
        else:
            order = np.arange(total, dtype=np.int64)
        mine = order[start + self.rank :: self.world_size][: self.records_per_rank(start)]
        return mine.astype(np.int64) + self.split.start


def resharded_start(start: int, world_size: int, position: int) -> int:
    """Global records consumed when each of ``world_size`` ranks has read ``position`` records after
    global position ``start``: where a run resumed on another number of processes goes on."""
    return start + world_size * position


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
