"""The moco target: its loss by hand, EMA math, the key queue as a ring, and the hook's first steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modaloom.errors import CheckpointError, ConfigError
from modaloom.losses.moco import MomentumInfoNCE
from modaloom.model import build_model
from modaloom.train.hooks import part_hooks
from modaloom.train.momentum import FeatureQueue, ema_update, momentum_copy
from tests.model.test_parts_dual import clip_batch, clip_config


def moco_config(**options) -> dict:
    cfg = clip_config()
    cfg["targets"][0].update(type="moco", **options)
    return cfg


def test_loss_matches_the_hand_computed_value():
    e = torch.eye(2)
    q0 = q1 = keys0 = keys1 = e
    queue1 = -e  # stream-0 queries meet the stream-1 queue: row 0 scores (1, 0, -1, 0)
    queue0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # stream-1 row 0 scores (1, 0, 0, 1)
    scores = MomentumInfoNCE(None)(q0, q1, keys0, keys1, queue0, queue1, torch.tensor(2.0))
    # scale 2: stream 0 -> 1 rows each -2 + log(e^2 + 2 + e^-2); stream 1 -> 0 rows -2 + log(2 e^2 + 2)
    expected = ((-2 + math.log(math.e ** 2 + 2 + math.e ** -2)) + (-2 + math.log(2 * math.e ** 2 + 2))) / 2
    assert scores.loss.item() == pytest.approx(expected, rel=1e-6)
    assert scores.logits_01.tolist() == [[2.0, 0.0, -2.0, 0.0], [0.0, 2.0, 0.0, -2.0]]
    # the second rank's single row: its positive is key row 1 of the gathered keys
    one = MomentumInfoNCE(None)(q0[1:], q1[1:], keys0, keys1, queue0, queue1, torch.tensor(2.0), offset=1)
    assert one.labels.tolist() == [1] and one.loss.item() == pytest.approx(expected, rel=1e-6)


def test_ema_update_moves_the_copy_towards_the_trained_weights():
    online = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    twin = momentum_copy(online)
    assert not any(p.requires_grad for p in twin.parameters()) and not twin.training
    before = twin[0].weight.clone()
    with torch.no_grad():
        online[0].weight.add_(1.0)
        online[1].running_mean.fill_(3.0)
    ema_update(twin, online, 0.9)
    torch.testing.assert_close(twin[0].weight, 0.9 * before + 0.1 * online[0].weight)
    assert twin[1].running_mean.tolist() == [3.0, 3.0]  # buffers are copied, not averaged
    ema_update(twin, online, 0.0)
    assert torch.equal(twin[0].weight, online[0].weight)


def test_queue_is_a_ring_with_a_pointer():
    rows = torch.arange(1.0, 10.0).unsqueeze(1)  # row k holds the value k
    queue = FeatureQueue(4, 1)
    assert queue.features().shape == (0, 1)  # an empty queue adds no negatives
    queue.push(rows[:3])
    assert queue.features().flatten().tolist() == [1, 2, 3] and queue.pointer == 3
    queue.push(rows[3:6])  # 4 lands at 3, then 5 and 6 wrap to the front
    assert queue.buffer.flatten().tolist() == [5, 6, 3, 4] and queue.pointer == 2 and queue.filled == 4
    queue.push(rows[4:9])  # five rows into four slots from slot 2: as if written one by one
    assert queue.buffer.flatten().tolist() == [7, 8, 9, 6] and queue.pointer == 3
    other = FeatureQueue(4, 1)
    other.load_state_dict(queue.state_dict())
    assert torch.equal(other.buffer, queue.buffer) and (other.pointer, other.filled) == (3, 4)
    with pytest.raises(CheckpointError, match="queue_size"):
        FeatureQueue(5, 1).load_state_dict(queue.state_dict())


def test_first_step_equals_clr_and_the_hook_fills_the_queues():
    torch.manual_seed(0)
    clr = build_model(clip_config())
    moco = build_model(moco_config(queue_size=5, momentum=0.5))
    moco.load_state_dict({k.replace("targets.clr.", "targets.moco."): v for k, v in clr.state_dict().items()})
    (hook,) = part_hooks(moco)
    assert hook.name == "momentum_contrast:moco" and not any(k.startswith("momentum") for k in moco.state_dict())
    batch = clip_batch(3)
    clr.train(), moco.train()
    out = moco(batch)
    # the momentum copy starts as the model (dropout 0): keys equal the queries, the queue is empty
    torch.testing.assert_close(out.loss, clr(batch).loss)
    assert out.metrics["moco_queue_filled"] == 0 and len(hook.pending) == 1
    q0, q1 = moco.targets["moco"].features(*moco.encode(batch), batch)
    hook(None)
    torch.testing.assert_close(hook.queues[0].features(), q0.detach())
    torch.testing.assert_close(hook.queues[1].features(), q1.detach())
    assert hook.pending == [] and hook.queues[0].pointer == 3
    out = moco(batch)
    assert out.logits["moco"].shape == (3, 6) and out.metrics["moco_queue_filled"] == 3
    hook.pending.clear()
    # evaluation, no gradient, or no hook: in-batch pairs only, the queue left alone
    moco.eval()
    with torch.no_grad():
        assert moco(batch).logits["moco"].shape == (3, 3) and hook.pending == []


def test_ema_follows_an_optimizer_step():
    torch.manual_seed(0)
    model = build_model(moco_config(momentum=0.75, queue_size=2))
    (hook,) = part_hooks(model)
    start = [p.detach().clone() for p in model.embedding.parameters()]
    model.train()
    model(clip_batch()).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    hook(None)
    for m, p, s in zip(hook.towers[0].parameters(), model.embedding.parameters(), start, strict=True):
        torch.testing.assert_close(m, 0.75 * s + 0.25 * p.detach())
    assert hook.queues[1].filled == 2 and hook.queues[1].pointer == 1  # three keys into two slots


def test_config_errors():
    with pytest.raises(ConfigError, match="cannot score momentum keys"):
        build_model(moco_config(loss="infonce"))
    with pytest.raises(ConfigError, match="momentum must be in"):
        build_model(moco_config(momentum=1.5))
    with pytest.raises(ConfigError, match="queue_size must be"):
        build_model(moco_config(queue_size=-1))


def test_momentum_keys_of_a_vlmo_encoder_use_the_dual_view():
    from tests.model.test_modality_experts import batch as vlmo_batch
    from tests.model.test_modality_experts import config as vlmo_config

    torch.manual_seed(0)
    model = build_model(vlmo_config(default_mode="fusion", targets=[dict(type="moco", feature_size=4, queue_size=4)]))
    (hook,) = part_hooks(model)
    data = vlmo_batch(3)
    model.eval()
    with torch.no_grad():
        hidden, mask = model.encode(data, mode="dual")
        expected = model.targets["moco"].key_features(hidden, mask, data, model.targets["moco"].projections)
        keys = hook.keys(data)
    # the copy starts as the model: its keys are the dual view's features (the fusion view has one sequence)
    for k, e in zip(keys, expected, strict=True):
        torch.testing.assert_close(k, e)
    model.train()
    out = model(data)
    assert torch.isfinite(out.loss) and len(hook.pending) == 1
