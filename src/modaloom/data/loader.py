"""Training and evaluation batches from a preprocessed dataset: shuffling, rank sharding, workers, resume.

``build_loader(data_dir, batch_size=..., seed=...)`` returns a ``Loader``. Iterating it yields the rest of
the current epoch as ``dict[str, torch.Tensor]`` batches, then moves to the next epoch; ``forever()``
chains epochs. ``state_dict()`` is (seed, epoch, records consumed in the epoch): loading it re-derives the
epoch's permutation and starts at that record, without replaying seen batches.

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
from modaloom.data.sampler import RankOrder, fixed_size_batches, packed_batches, split_records
from modaloom.data.storage import StoredDataset, open_dataset
from modaloom.errors import ConfigError, DataError

STATE_VERSION = 1


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
        self.position = 0  # records of this rank's epoch order already delivered
        self._epoch_indices: tuple[int, np.ndarray] | None = None

    # ---- iteration -------------------------------------------------------------------------------
    def _indices(self, epoch: int) -> np.ndarray:
        if self._epoch_indices is None or self._epoch_indices[0] != epoch:
            self._epoch_indices = (epoch, self.order.indices(epoch))
        return self._epoch_indices[1]

    def _plan(self, epoch: int, start: int) -> Iterator[tuple[np.ndarray, int]]:
        indices = self._indices(epoch)
        if self._lengths is not None:
            capacity = self.batch_size * self.seq_length
            return packed_batches(indices, self._lengths, start, capacity, self.drop_last)
        return fixed_size_batches(indices, start, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        """Batches in a full epoch (fixed-size batches; with packing, an upper bound is not known)."""
        if self.padding == "packing":
            raise TypeError("the number of packed batches per epoch depends on record lengths")
        per_rank = self.order.records_per_rank()
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The remaining batches of the current epoch; afterwards the loader stands at the next epoch."""
        if self.position and next(iter(self._plan(self.epoch, self.position)), None) is None:
            # stopped (and checkpointed) right after the epoch's last batch, before its iterator ended
            self.epoch, self.position = self.epoch + 1, 0
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
            self.epoch, self.position = epoch + 1, 0

    def forever(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches across epochs without end (for step-based training)."""
        while True:
            produced = False
            for batch in self:
                produced = True
                yield batch
            if not produced and self.position == 0 and self._epoch_is_empty():
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
            "position": self.position,
            "rank": self.order.rank,
            "world_size": self.order.world_size,
            "records": len(self.split),
            "split": [self.split.start, self.split.stop],
            "shuffle": self.order.shuffle,
            "padding": self.padding,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (O(1): the epoch order is re-derived from seed and epoch)."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"loader state version {state.get('version')!r}; this modaloom reads {STATE_VERSION}")
        expected = {"seed": self.seed, "world_size": self.order.world_size,
                    "split": [self.split.start, self.split.stop], "shuffle": self.order.shuffle}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ConfigError(f"cannot resume the data loader: checkpoint has {key}={state.get(key)!r}, this "
                                  f"run has {value!r} (the record order would differ)")
        position = int(state["position"])
        if not 0 <= position <= self.order.records_per_rank():
            raise ConfigError(f"loader state position {position} is outside this rank's "
                              f"{self.order.records_per_rank()} records")
        self.epoch = int(state["epoch"])
        self.position = position


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
