"""Training and evaluation batches from a preprocessed dataset: shuffling, rank sharding, workers, resume.

``build_loader(data_dir, batch_size=..., seed=...)`` returns a ``Loader``. Iterating it yields the rest of
the current epoch as ``dict[str, torch.Tensor]`` batches, then moves to the next epoch; ``forever()``
chains epochs. ``state_dict()`` is (seed, epoch, records consumed in the epoch): loading it re-derives the
epoch's permutation and starts at that record, without replaying seen batches.

Another number of processes may load the state (a 2-process run resumed on 1, or on 4): the epoch's
global order does not depend on the world size (``data/sampler.py``), every rank of a run with fixed-size
batches has consumed the same number ``p`` of records, so the first ``start + world_size * p`` records of
the global order are exactly the consumed ones and the new ranks share out the rest. Each record of the
epoch is then read once, except the fewer-than-``world_size`` records at the end of the order that
``drop_last`` leaves out. Packed batches consume different counts per rank: their state resumes only on
the same number of processes, or from an epoch boundary.

Determinism: each example is made by ``processor.make_example(stored, rng)`` with
``rng = default_rng([seed, epoch, global index])``, inside DataLoader workers when ``num_workers`` > 0.
Masks, crops and SpecAugment therefore depend on the seed, epoch and record only, never on the number
of workers or on where a run was resumed.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modaloom.data.collate import Collator
from modaloom.data.sampler import (
    RankOrder,
    fixed_size_batches,
    packed_batches,
    resharded_start,
    split_records,
)
from modaloom.data.storage import StoredDataset, open_dataset
from modaloom.errors import ConfigError, DataError

STATE_VERSION = 2  # 2: ranks interleave the global order and the state has 'start'


class ExampleSource(Dataset):
    """Map-style dataset keyed by (epoch, global index): fetch a stored record, make an example from it.

    Holds the StoredDataset (which pickles without its memory maps) so workers reopen shards lazily.
    """

    def __init__(self, dataset: StoredDataset, processor: Any, seed: int):
        self.dataset = dataset
        self.processor = processor
        self.seed = seed
        self._passes_index = "index" in inspect.signature(processor.make_example).parameters
        bind = getattr(processor, "bind_dataset", None)
        if callable(bind):
            bind(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        stored = self.dataset[index]
        try:
            if self._passes_index:
                return self.processor.make_example(stored, rng, index=index)
            return self.processor.make_example(stored, rng)
        except DataError as exc:
            raise DataError(f"{self.dataset.directory}: record {index}: {exc}") from exc


class _PlannedBatches:
    """Batch sampler for DataLoader: yields [(epoch, index), ...] lists from a plan and remembers, in
    order, the epoch position after each batch so the loader knows exactly what has been consumed."""

    def __init__(self, plan: Iterator[tuple[np.ndarray, int]], epoch: int, ends: deque[int]):
        self.plan = plan
        self.epoch = epoch
        self.ends = ends

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for indices, end in self.plan:
            self.ends.append(end)
            yield [(self.epoch, int(i)) for i in indices]


class Loader:
    """Resumable, rank-sharded batches of one split of a dataset (see the module docstring)."""

    def __init__(
        self,
        dataset: StoredDataset,
        processor: Any,
        *,
        batch_size: int,
        seed: int = 0,
        seq_length: int = 0,
        padding: str = "longest",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        split: str = "train",
        holdout: float = 0,
        length_field: str = "input_ids",
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.processor = processor
        self.batch_size = batch_size
        self.seed = int(seed)
        self.seq_length = seq_length or int(getattr(processor, "seq_length", 0))
        self.padding = padding
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.split = split_records(len(dataset), holdout, split)
        self.order = RankOrder(self.split, self.seed, rank, world_size, shuffle, drop_last)
        self.collate = Collator(processor.pad_value, padding, self.seq_length, batch_size)
        self.source = ExampleSource(dataset, processor, self.seed)
        self._lengths: np.ndarray | None = None
        if padding == "packing":
            if length_field not in dataset.fields:
                raise ConfigError(f"packing measures records by field {length_field!r}, which "
                                  f"{dataset.directory} lacks; fields: {', '.join(sorted(dataset.fields))}")
            # A processor whose examples are longer or shorter than the stored field (added [CLS]/[SEP],
            # the one-token shift of LM labels) declares the difference so that packed rows fill up.
            delta = int(getattr(processor, "packed_length_delta", 0))
            self._lengths = np.maximum(dataset.lengths(length_field) + delta, 1)
        self.epoch = 0
        self.start = 0  # records of the epoch's global order consumed before this rank's slice begins
        self.position = 0  # records of this rank's slice already delivered
        self._epoch_indices: tuple[tuple[int, int], np.ndarray] | None = None

    # ---- iteration -------------------------------------------------------------------------------
    def _indices(self, epoch: int) -> np.ndarray:
        key = (epoch, self.start)
        if self._epoch_indices is None or self._epoch_indices[0] != key:
            self._epoch_indices = (key, self.order.indices(epoch, self.start))
        return self._epoch_indices[1]

    def _plan(self, epoch: int, position: int) -> Iterator[tuple[np.ndarray, int]]:
        indices = self._indices(epoch)
        if self._lengths is not None:
            capacity = self.batch_size * self.seq_length
            return packed_batches(indices, self._lengths, position, capacity, self.drop_last)
        return fixed_size_batches(indices, position, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        """Batches in a full epoch (fixed-size batches; with packing, an upper bound is not known)."""
        if self.padding == "packing":
            raise TypeError("the number of packed batches per epoch depends on record lengths")
        per_rank = self.order.records_per_rank()
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The remaining batches of the current epoch; afterwards the loader stands at the next epoch."""
        if (self.position or self.start) and next(iter(self._plan(self.epoch, self.position)), None) is None:
            # stopped (and checkpointed) right after the epoch's last batch, before its iterator ended; or
            # resumed on more processes than can share the epoch's last records
            self.epoch, self.start, self.position = self.epoch + 1, 0, 0
        epoch = self.epoch
        ends: deque[int] = deque()
        sampler = _PlannedBatches(self._plan(epoch, self.position), epoch, ends)
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False}
        loader = DataLoader(self.source, batch_sampler=sampler, collate_fn=self.collate,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, **extra)
        for batch in loader:
            self.position = ends.popleft()
            yield batch
        if self.epoch == epoch:
            self.epoch, self.start, self.position = epoch + 1, 0, 0

    def forever(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches across epochs without end (for step-based training)."""
        while True:
            produced = False
            for batch in self:
                produced = True
                yield batch
            if not produced and self.position == 0 and self.start == 0 and self._epoch_is_empty():
                raise DataError(f"{self.dataset.directory}: an epoch yields no batch of {self.batch_size} "
                                f"on rank {self.order.rank} ({self.order.records_per_rank()} records)")

    def _epoch_is_empty(self) -> bool:
        return next(iter(self._plan(self.epoch, 0)), None) is None

    # ---- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the last delivered batch ended."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "start": self.start,
            "position": self.position,
            "rank": self.order.rank,
            "world_size": self.order.world_size,
            "records": len(self.split),
            "split": [self.split.start, self.split.stop],
            "shuffle": self.order.shuffle,
            "padding": self.padding,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (O(1): the epoch order is re-derived from seed and epoch), written by
        this or by another number of processes (see the module docstring)."""
        state = upgrade_state(state)
        expected = {"seed": self.seed, "split": [self.split.start, self.split.stop], "shuffle": self.order.shuffle}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ConfigError(f"cannot resume the data loader: checkpoint has {key}={state.get(key)!r}, this "
                                  f"run has {value!r} (the record order would differ)")
        epoch, start, position = int(state["epoch"]), int(state["start"]), int(state["position"])
        saved_world = int(state["world_size"])
        if saved_world != self.order.world_size and (start or position):
            if state.get("padding") == "packing":
                raise ConfigError(f"cannot resume packed batches of {saved_world} process(es) on "
                                  f"{self.order.world_size} in the middle of epoch {epoch}: packed ranks stop at "
                                  f"different records; resume on {saved_world} process(es), or from a checkpoint "
                                  f"taken at an epoch boundary")
            start, position = resharded_start(start, saved_world, position), 0
        if not 0 <= start <= len(self.split):
            raise ConfigError(f"loader state start {start} is outside the split's {len(self.split)} records")
        if not 0 <= position <= self.order.records_per_rank(start):
            raise ConfigError(f"loader state position {position} is outside this rank's "
                              f"{self.order.records_per_rank(start)} records")
        self.epoch, self.start, self.position = epoch, start, position


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A version-2 loader state from ``state``. Version 1 (ranks read contiguous blocks, no 'start') is the
    same order on one process and at an epoch's beginning; elsewhere it cannot be continued exactly."""
    version = state.get("version")
    if version == STATE_VERSION:
        return state
    if version != 1:
        raise ConfigError(f"loader state version {version!r}; this modaloom reads {STATE_VERSION} (and 1)")
    if int(state.get("world_size", 1)) > 1 and int(state.get("position", 0)):
        raise ConfigError(f"loader state version 1 of {state['world_size']} processes stopped in the middle of "
                          f"epoch {state.get('epoch')}: its ranks read contiguous blocks, this modaloom interleaves "
                          f"them; resume it with the modaloom that wrote it, or from a checkpoint taken at an "
                          f"epoch boundary")
    return {**state, "version": STATE_VERSION, "start": 0}


def build_loader(
    data_dir: str | Path | StoredDataset,
    *,
    batch_size: int,
    seed: int = 0,
    seq_length: int | None = None,
    padding: str = "longest",
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    split: str = "train",
    holdout: float = 0,
    option_overrides: dict[str, Any] | None = None,
    processor: Any = None,
    **loader_options: Any,
) -> Loader:
    """Open a dataset directory, rebuild its processor from the manifest, and return a Loader.

    ``split``/``holdout``: "train" reads all but the last ``holdout`` records (a count, or a fraction
    when below 1), "heldout" reads only those, "all" reads everything. Evaluation loaders should pass
    ``shuffle=False, drop_last=False`` so that every held-out record is read once over all ranks.
    """
    dataset = data_dir if isinstance(data_dir, StoredDataset) else open_dataset(data_dir)
    if processor is None:
        from modaloom.data.processors.base import processor_from_dataset

        processor = processor_from_dataset(dataset, seq_length, option_overrides)
    return Loader(dataset, processor, batch_size=batch_size, seed=seed, seq_length=seq_length or 0,
                  padding=padding, rank=rank, world_size=world_size, num_workers=num_workers,
                  shuffle=shuffle, drop_last=drop_last, split=split, holdout=holdout, **loader_options)
