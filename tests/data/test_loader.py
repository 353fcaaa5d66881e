"""Loader: seeded per-epoch order, disjoint ranks, worker-count independence, O(1) exact resume, collate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from modaloom.data.collate import Collator
from modaloom.data.loader import Loader
from modaloom.data.sampler import RankOrder, split_records
from modaloom.data.storage import FieldSpec, StoredDataset, open_dataset
from modaloom.errors import ConfigError

PAD_ID = 0
MASK_ID = 3


class MaskingProcessor:
    """A tiny MLM-like processor: masks ~30% of tokens with the example's RNG (dynamic masking)."""

    seq_length = 16

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        chosen = rng.random(len(ids)) < 0.3
        labels = np.where(chosen, ids, -100)
        return {"input_ids": np.where(chosen, MASK_ID, ids), "mlm_labels": labels,
                "labels": np.asarray(stored["label"], dtype=np.int64)}

    def pad_value(self, key: str) -> int:
        return -100 if key.endswith("labels") else PAD_ID


class LmProcessor(MaskingProcessor):
    packed_length_delta = -1  # examples are one token shorter than the stored ids

    def make_example(self, stored: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(stored["input_ids"], dtype=np.int64)
        return {"input_ids": ids[:-1], "lm_labels": ids[1:]}


def write_dataset(directory: Path, count: int = 103, shard_bytes: int = 200) -> StoredDataset:
    """Records i: ids [10 + i, ...] of length 3 + i % 9, label i; small shards so there are several."""
    from modaloom.data.storage import DatasetWriter

    with DatasetWriter(directory, {"input_ids": FieldSpec("uint16"), "label": FieldSpec("int64", "scalar")},
                       shard_bytes=shard_bytes) as writer:
        for i in range(count):
            writer.add({"input_ids": np.arange(10 + i, 10 + i + 3 + i % 9), "label": i})
        writer.close({"processor": {"name": "test"}})
    return open_dataset(directory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> StoredDataset:
    ds = write_dataset(tmp_path_factory.mktemp("loader") / "ds")
    assert len(ds.shard_bounds) > 3
    return ds


def make_loader(dataset: StoredDataset, **kwargs) -> Loader:
    processor = kwargs.pop("processor", None) or MaskingProcessor()
    options = {"batch_size": 8, "seed": 5, **kwargs}
    return Loader(dataset, processor, **options)


def collect(loader: Loader, count: int | None = None) -> list[dict[str, torch.Tensor]]:
    out = []
    for batch in loader:
        out.append(batch)
        if count is not None and len(out) == count:
            break
    return out


def assert_same_batches(first: list[dict[str, torch.Tensor]], second: list[dict[str, torch.Tensor]]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_epochs_cover_every_record_once_in_a_new_order(dataset: StoredDataset) -> None:
    loader = make_loader(dataset, drop_last=False)
    first = torch.cat([b["labels"] for b in collect(loader)])
    second = torch.cat([b["labels"] for b in collect(loader)])
    assert sorted(first.tolist()) == list(range(len(dataset)))
    assert sorted(second.tolist()) == list(range(len(dataset)))
    assert first.tolist() != second.tolist()
    assert loader.epoch == 2
    # Records come from every shard within the first batches: shuffling crosses shards.
    shards = {dataset.locate(i)[0] for i in first[:16].tolist()}
    assert len(shards) > 2


def test_same_seed_same_batches_other_seed_differs(dataset: StoredDataset) -> None:
    assert_same_batches(collect(make_loader(dataset)), collect(make_loader(dataset)))
    other = collect(make_loader(dataset, seed=6))
    assert not torch.equal(other[0]["labels"], collect(make_loader(dataset))[0]["labels"])


def test_masks_change_between_epochs_for_the_same_record(dataset: StoredDataset) -> None:
    loader = make_loader(dataset, shuffle=False, batch_size=len(dataset))
    epoch0, epoch1 = collect(loader)[0], collect(loader)[0]
    assert torch.equal(epoch0["labels"], epoch1["labels"])
    assert not torch.equal(epoch0["input_ids"], epoch1["input_ids"])


def test_worker_count_does_not_change_batches(dataset: StoredDataset) -> None:
    serial = collect(make_loader(dataset, num_workers=0))
    parallel = collect(make_loader(dataset, num_workers=2))
    assert_same_batches(serial, parallel)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_state_dict_gives_the_same_following_batches(dataset: StoredDataset, num_workers: int) -> None:
    reference = make_loader(dataset, num_workers=num_workers)
    full = collect(reference) + collect(reference)

    first_run = make_loader(dataset, num_workers=num_workers)
    seen = collect(first_run, count=5)  # stop mid-epoch, workers have prefetched further
    state = first_run.state_dict()
    assert state["epoch"] == 0 and state["position"] == 5 * 8

    resumed = make_loader(dataset, num_workers=num_workers)
    resumed.load_state_dict(state)
    rest = collect(resumed) + collect(resumed)
    assert_same_batches(seen + rest, full)


def test_resume_at_epoch_boundary(dataset: StoredDataset) -> None:
    loader = make_loader(dataset)
    collect(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0)
    resumed = make_loader(dataset)
    resumed.load_state_dict(state)
    assert_same_batches(collect(resumed), collect(loader))


@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_right_after_an_epochs_last_batch(dataset: StoredDataset, drop_last: bool) -> None:
    """The trainer checkpoints after the epoch's last batch, before the epoch's iterator has ended: the
    state is (epoch, its end), and a resumed loader must go on with the next epoch, not yield nothing."""
    loader = make_loader(dataset, drop_last=drop_last)
    seen = collect(loader, count=len(loader))
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["position"] > 0
    resumed = make_loader(dataset, drop_last=drop_last)
    resumed.load_state_dict(state)
    reference = make_loader(dataset, drop_last=drop_last)
    assert_same_batches(seen + collect(resumed), collect(reference) + collect(reference))


def test_resume_refuses_a_different_seed(dataset: StoredDataset) -> None:
    state = make_loader(dataset).state_dict()
    with pytest.raises(ConfigError, match="seed"):
        make_loader(dataset, seed=9).load_state_dict(state)


def run_ranks(dataset: StoredDataset, world_size: int, states: list[dict] | None = None,
              batches: int | None = None, **kwargs) -> tuple[list[int], list[dict]]:
    """Every rank of a ``world_size`` job (resumed from ``states``, rank r from ``states[r]`` or, when the
    job had fewer ranks, ``states[0]`` as checkpoint.source_rank does) draws ``batches`` batches or the rest
    of the epoch; the labels read by all ranks, and each rank's state afterwards."""
    labels, after = [], []
    for rank in range(world_size):
        loader = make_loader(dataset, rank=rank, world_size=world_size, **kwargs)
        if states is not None:
            loader.load_state_dict(states[rank] if rank < len(states) else states[0])
        labels += [int(x) for b in collect(loader, count=batches) for x in b["labels"]]
        after.append(loader.state_dict())
    return labels, after


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize(("before", "after", "records"), [(2, 1, 24), (1, 2, 40), (2, 3, 16), (3, 2, 8), (2, 1, 40)])
def test_resume_on_another_world_size_reads_each_record_of_the_epoch_once(
        dataset: StoredDataset, before: int, after: int, records: int, batch_size: int) -> None:
    """Stop mid-epoch on ``before`` processes after ``records`` records per rank, go on with ``after``: each
    record of the epoch is read at most once; left out are only the fewer-than-``after`` records at the end
    of the epoch's global order and, with ``drop_last``, each new rank's final incomplete batch."""
    first, states = run_ranks(dataset, before, batches=records // batch_size, batch_size=batch_size)
    assert {s["position"] for s in states} == {records} and states[0]["epoch"] == 0
    second, resumed = run_ranks(dataset, after, states, batch_size=batch_size)
    seen = first + second
    assert len(seen) == len(set(seen))  # no duplicates
    order = np.random.default_rng([5, 0]).permutation(len(dataset))
    consumed = before * records
    assert set(first) == {int(i) for i in order[:consumed]}  # the global order's prefix, exactly
    per_rank = (len(dataset) - consumed) // after
    kept = per_rank // batch_size * batch_size
    assert set(second) == {int(i) for r in range(after) for i in order[consumed + r :: after][:kept]}
    missing = set(range(len(dataset))) - set(seen)
    if batch_size == 1:
        assert missing == {int(i) for i in order[consumed + after * per_rank:]}
        assert len(missing) < after
    # the next epoch is an ordinary epoch of the new world size
    assert {(s["epoch"], s["start"], s["position"]) for s in resumed} == {(1, 0, 0)}
    fresh = [{**s, "epoch": 1} for s in run_ranks(dataset, after, batch_size=batch_size)[1]]
    assert run_ranks(dataset, after, resumed, batch_size=batch_size)[0] == \
        run_ranks(dataset, after, fresh, batch_size=batch_size)[0]


def test_global_batches_do_not_depend_on_the_world_size(dataset: StoredDataset) -> None:
    """Rank r of W holds rows r::W of global batch k: W=2 at batch 4 and W=1 at batch 8 train on the same
    records per step, which is what makes a 2 -> 1 resume with a doubled batch continue the same run."""
    ranks = [collect(make_loader(dataset, rank=r, world_size=2, batch_size=4)) for r in range(2)]
    single = collect(make_loader(dataset, batch_size=8))
    assert len(single) == len(ranks[0])
    for k, batch in enumerate(single):
        assert sorted(batch["labels"].tolist()) == sorted(ranks[0][k]["labels"].tolist() +
                                                          ranks[1][k]["labels"].tolist())


def test_same_world_size_resume_keeps_its_position(dataset: StoredDataset) -> None:
    """Resumed on as many processes, each rank goes on from its own position (not resharded): batches
    are those of the uninterrupted run."""
    _, states = run_ranks(dataset, 2, batches=2)
    assert [(s["start"], s["position"]) for s in states] == [(0, 16), (0, 16)]
    resumed, _ = run_ranks(dataset, 2, states)
    reference = [int(x) for r in range(2)
                 for b in collect(make_loader(dataset, rank=r, world_size=2))[2:] for x in b["labels"]]
    assert resumed == reference


def test_a_resharded_state_resumes_again_on_a_third_world_size(dataset: StoredDataset) -> None:
    first, states = run_ranks(dataset, 2, batches=1)
    second, states = run_ranks(dataset, 3, states, batches=1)
    assert {(s["start"], s["position"]) for s in states} == {(16, 8)}
    third, _ = run_ranks(dataset, 1, states)
    seen = first + second + third
    assert len(seen) == len(set(seen)) == 16 + 24 + (len(dataset) - 40) // 8 * 8


def test_resume_on_more_ranks_than_records_left_goes_to_the_next_epoch(dataset: StoredDataset) -> None:
    loader = make_loader(dataset, batch_size=1)
    collect(loader, count=len(dataset) - 2)  # 2 records left: too few for 4 ranks
    state = loader.state_dict()
    for rank in range(4):
        resumed = make_loader(dataset, rank=rank, world_size=4, batch_size=1)
        resumed.load_state_dict(state)
        assert (resumed.start, resumed.position) == (len(dataset) - 2, 0)
        fresh = make_loader(dataset, rank=rank, world_size=4, batch_size=1)
        fresh.epoch = 1
        assert_same_batches(collect(resumed), collect(fresh))  # epoch 1 in full, not an empty iteration
        assert resumed.epoch == 2


def test_packed_state_refuses_another_world_size_mid_epoch(dataset: StoredDataset) -> None:
    def packed(world_size: int = 1) -> Loader:
        return make_loader(dataset, processor=LmProcessor(), padding="packing", seq_length=16, batch_size=2,
                           world_size=world_size)

    loader = packed()
    collect(loader, count=2)
    with pytest.raises(ConfigError, match="packed batches of 1 process.*epoch boundary"):
        packed(2).load_state_dict(loader.state_dict())
    collect(loader)
    packed(2).load_state_dict(loader.state_dict())  # at the epoch boundary: accepted


def test_version_1_states_load_where_their_order_is_unchanged(dataset: StoredDataset) -> None:
    loader = make_loader(dataset)
    collect(loader, count=3)
    old = {k: v for k, v in loader.state_dict().items() if k != "start"} | {"version": 1}
    resumed = make_loader(dataset)
    resumed.load_state_dict(old)  # one process: blocks and interleaving are the same order
    assert_same_batches(collect(resumed), collect(loader))
    with pytest.raises(ConfigError, match="version 1 of 2 processes.*epoch boundary"):
        make_loader(dataset, world_size=2).load_state_dict({**old, "world_size": 2})
    with pytest.raises(ConfigError, match="version 7"):
        make_loader(dataset).load_state_dict({**old, "version": 7})


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_cover_the_epoch(dataset: StoredDataset, world_size: int) -> None:
    for epoch in range(2):
        per_rank = []
        for rank in range(world_size):
            loader = make_loader(dataset, rank=rank, world_size=world_size, batch_size=1)
            loader.epoch = epoch
            per_rank.append({int(b["labels"]) for b in collect(loader)})
        sizes = {len(s) for s in per_rank}
        assert sizes == {len(dataset) // world_size}  # equal counts keep DDP ranks in lock-step
        union = set().union(*per_rank)
        assert len(union) == sum(len(s) for s in per_rank)  # disjoint
        assert len(union) == len(dataset) - len(dataset) % world_size


def test_evaluation_order_reads_every_record_once_over_ranks() -> None:
    split = split_records(103, 0, "all")
    seen = np.concatenate([RankOrder(split, 1, r, 4, shuffle=False, drop_last=False).indices(0) for r in range(4)])
    assert sorted(seen.tolist()) == list(range(103))


def test_holdout_split_is_the_last_records_and_disjoint_from_train(dataset: StoredDataset) -> None:
    train = make_loader(dataset, holdout=0.1, drop_last=False)
    held = make_loader(dataset, holdout=0.1, split="heldout", shuffle=False, drop_last=False)
    train_labels = {int(x) for b in collect(train) for x in b["labels"]}
    held_labels = [int(x) for b in collect(held) for x in b["labels"]]
    assert held_labels == list(range(93, 103))
    assert train_labels == set(range(93))
    with pytest.raises(ConfigError, match="holdout"):
        split_records(10, 10, "train")
    with pytest.raises(ConfigError, match="held-out split is empty"):
        split_records(10, 0, "heldout")


def test_collate_pads_labels_with_ignore_and_ids_with_pad(dataset: StoredDataset) -> None:
    batch = collect(make_loader(dataset, shuffle=False, batch_size=4))[0]
    lengths = [3, 4, 5, 6]
    assert batch["input_ids"].shape == (4, 6)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, length in enumerate(lengths):
        assert (batch["input_ids"][row, length:] == PAD_ID).all()
        assert (batch["mlm_labels"][row, length:] == -100).all()
    fixed = collect(make_loader(dataset, shuffle=False, batch_size=4, padding="max_length", seq_length=16))[0]
    assert fixed["input_ids"].shape == (4, 16) and fixed["labels"].shape == (4,)


def test_packing_fills_rows_and_keeps_every_token(dataset: StoredDataset) -> None:
    loader = make_loader(dataset, processor=LmProcessor(), padding="packing", seq_length=16, batch_size=2,
                         drop_last=False)
    batches = collect(loader)
    assert all(b["input_ids"].shape[1] == 16 and b["input_ids"].shape[0] <= 2 for b in batches)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert real_tokens == sum(len(dataset[i]["input_ids"]) - 1 for i in range(len(dataset)))
    fill = real_tokens / sum(b["attention_mask"].numel() for b in batches)
    assert fill > 0.85
    # label of each real position is the next token of the same record
    first = batches[0]
    mask = first["attention_mask"].bool()
    assert (first["lm_labels"][mask] != -100).all() and (first["lm_labels"][~mask] == -100).all()
    state = loader.state_dict()
    assert state["epoch"] == 1


def test_packing_resume_is_exact(dataset: StoredDataset) -> None:
    def packed() -> Loader:
        return make_loader(dataset, processor=LmProcessor(), padding="packing", seq_length=16, batch_size=2)

    full = collect(packed())
    first = packed()
    head = collect(first, count=3)
    resumed = packed()
    resumed.load_state_dict(first.state_dict())
    assert_same_batches(head + collect(resumed), full)


def test_collator_derives_feature_mask_and_rejects_unknown_padding() -> None:
    collate = Collator(lambda key: -100 if key.endswith("labels") else 0)
    batch = collate([{"input_features": np.ones((5, 80), np.float32), "lm_labels": np.arange(3)},
                     {"input_features": np.ones((2, 80), np.float32), "lm_labels": np.arange(4)}])
    assert batch["input_features"].shape == (2, 5, 80)
    assert batch["feature_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert batch["lm_labels"][0].tolist() == [0, 1, 2, -100]
    with pytest.raises(ConfigError, match="padding"):
        Collator(lambda key: 0, padding="bucket")
