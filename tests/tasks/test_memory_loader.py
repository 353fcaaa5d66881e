"""The in-memory batch order every fine-tuning task shares: seeded shuffle, rank shares, length grouping."""

from __future__ import annotations

from modaloom.tasks.text_io import GROUP_BATCHES, MemoryLoader


def examples(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [5] * n, "segment_ids": [0] * n, "index": i} for i, n in enumerate(lengths)]


def batch_indices(loader: MemoryLoader) -> list[list[int]]:
    return [[e["index"] for e in batch] for batch in loader.batches()]


def test_unshuffled_order_is_the_input_order_and_drop_last_drops_the_short_batch():
    loader = MemoryLoader(examples([3] * 10), batch_size=4, pad_id=0)
    assert batch_indices(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    loader.drop_last = True
    assert batch_indices(loader) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_grouping_keeps_every_example_once_and_pads_less():
    import random

    lengths = [random.Random(i).randint(1, 120) for i in range(600)]
    plain = MemoryLoader(examples(lengths), batch_size=8, pad_id=0, shuffle=True, seed=3)
    grouped = MemoryLoader(examples(lengths), batch_size=8, pad_id=0, shuffle=True, seed=3, group_by_length=True)

    def padded(loader: MemoryLoader) -> tuple[int, list[int]]:
        batches = batch_indices(loader)
        return sum(len(b) * max(lengths[i] for i in b) for b in batches), sorted(i for b in batches for i in b)

    plain_tokens, plain_seen = padded(plain)
    grouped_tokens, grouped_seen = padded(grouped)
    assert plain_seen == grouped_seen == list(range(600))
    assert grouped_tokens < 0.7 * plain_tokens  # random lengths 1-120: grouping removes most padding
    # a batch is a slice of a length-sorted pool of GROUP_BATCHES batches: it spans a narrow range of lengths
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batch_indices(grouped)]
    assert sum(spans) / len(spans) < 120 / GROUP_BATCHES * 2


def test_grouped_order_is_seeded_per_epoch_and_replays_after_a_restart():
    lengths = list(range(1, 41))
    first = MemoryLoader(examples(lengths), batch_size=4, pad_id=0, shuffle=True, seed=5, group_by_length=True)
    epoch0, epoch1 = batch_indices(first), batch_indices(first)
    assert epoch0 != epoch1  # a new order each epoch
    again = MemoryLoader(examples(lengths), batch_size=4, pad_id=0, shuffle=True, seed=5, group_by_length=True)
    assert batch_indices(again) == epoch0
    again.epoch = 1  # a resumed run sets the epoch it stopped in
    assert batch_indices(again) == epoch1


def test_collate_pads_to_the_longest_example_of_the_batch():
    loader = MemoryLoader(examples([2, 5, 3]), batch_size=3, pad_id=9)
    (batch,) = list(loader)
    assert batch["input_ids"].shape == (3, 5)
    assert batch["input_ids"][0].tolist() == [5, 5, 9, 9, 9]
    assert batch["attention_mask"].sum().item() == 10


def test_batches_pad_to_a_multiple_only_under_cpu_autocast():
    """Under CPU autocast oneDNN keeps a matmul primitive per shape: fine-tuning pads to a multiple of 16 there
    (masked, so the model computes the same), to the longest example elsewhere."""
    from types import SimpleNamespace

    import torch

    from modaloom.tasks.finetune import CPU_AUTOCAST_PAD, FinetuneTask

    loader = MemoryLoader(examples([3, 17, 5]), batch_size=3, pad_id=0)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (3, 17) and int(batch["attention_mask"].sum()) == 25
    cpu = SimpleNamespace(device=torch.device("cpu"))
    for precision, multiple in (("bf16", CPU_AUTOCAST_PAD), ("fp16", CPU_AUTOCAST_PAD), ("fp32", 1)):
        task = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(precision=precision)))
        fresh = MemoryLoader(examples([3, 17, 5]), batch_size=3, pad_id=0)
        assert FinetuneTask.bucketed(task, fresh, cpu).pad_multiple == multiple
    task = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(precision="bf16")))
    on_gpu = FinetuneTask.bucketed(task, MemoryLoader(examples([3]), batch_size=1, pad_id=0),
                                   SimpleNamespace(device=torch.device("cuda")))
    assert on_gpu.pad_multiple == 1
    loader.pad_multiple = 16
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (3, 32) and int(batch["attention_mask"].sum()) == 25
    assert batch["input_ids"][1, 17:].eq(0).all() and batch["segment_ids"][1, 17:].eq(0).all()
