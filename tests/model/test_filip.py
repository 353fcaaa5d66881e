"""FILIP token-wise late interaction (``clr`` with ``loss: filip``): the similarity and loss by hand, padding,
gathering across two gloo ranks, and a tiny dual model that learns with it."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.losses.filip import Filip, late_interaction
from modaloom.model import build_model
from modaloom.model_config import TargetConfig
from tests.model.test_parts_dual import clip_batch, clip_config
from tests.model.two_ranks import run_two_ranks


def _hand_example():
    """Two texts (stream 0, 3 slots) and two images (stream 1, 2 slots) of 2-d unit tokens with padding.

    Pad slots hold vectors that would change every similarity below if they were read.
    """
    t0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]],    # text A: (1,0), (0,1), pad
                       [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]])   # text B: (.6,.8), pad, pad
    m0 = torch.tensor([[1, 1, 0], [1, 0, 0]])
    t1 = torch.tensor([[[1.0, 0.0], [0.6, 0.8]],                # image P: (1,0), (.6,.8)
                       [[0.0, 1.0], [1.0, 0.0]]])               # image Q: (0,1), pad
    m1 = torch.tensor([[1, 1], [1, 0]])
    return t0, m0, t1, m1


def test_late_interaction_by_hand_with_padding():
    t0, m0, t1, m1 = _hand_example()
    # text -> image: per text token the best image token, averaged over the text's real tokens
    #   A.P: (max(1, .6) + max(0, .8)) / 2 = .9   A.Q: (0 + 1) / 2 = .5   B.P: max(.6, 1) = 1   B.Q: .8
    expected_01 = torch.tensor([[0.9, 0.5], [1.0, 0.8]])
    # image -> text: P.A: (max(1, 0) + max(.6, .8)) / 2 = .9   P.B: (.6 + 1) / 2 = .8   Q.A: 1   Q.B: .8
    expected_10 = torch.tensor([[0.9, 0.8], [1.0, 0.8]])
    assert torch.allclose(late_interaction(t0, m0.bool(), t1, m1.bool()), expected_01, atol=1e-6)
    assert torch.allclose(late_interaction(t1, m1.bool(), t0, m0.bool()), expected_10, atol=1e-6)
    assert torch.allclose(late_interaction(t0, m0.bool(), t1, m1.bool(), chunk_rows=1), expected_01, atol=1e-6)
    unmasked = late_interaction(t0, torch.ones_like(m0).bool(), t1, torch.ones_like(m1).bool())
    assert not torch.allclose(unmasked, expected_01, atol=1e-3)  # the pads matter when not masked


def test_filip_loss_by_hand():
    t0, m0, t1, m1 = _hand_example()
    loss = Filip(TargetConfig(type="clr", loss="filip"))
    scores = loss(t0, m0, t1, m1, torch.tensor(10.0))
    # logits 10 x sims, labels on the diagonal: row CE = log(1 + exp(other - own))
    ce_01 = (math.log1p(math.exp(5 - 9)) + math.log1p(math.exp(10 - 8))) / 2
    ce_10 = (math.log1p(math.exp(8 - 9)) + math.log1p(math.exp(10 - 8))) / 2
    assert scores.loss.item() == pytest.approx((ce_01 + ce_10) / 2, abs=1e-5)
    assert scores.labels.tolist() == [0, 1]
    assert torch.allclose(scores.logits_01, 10 * torch.tensor([[0.9, 0.5], [1.0, 0.8]]), atol=1e-5)
    none_mask = loss(t1, None, t1, None, torch.tensor(1.0))  # no mask: every token is real
    assert torch.allclose(none_mask.logits_01, late_interaction(t1, torch.ones(2, 2).bool(),
                                                                t1, torch.ones(2, 2).bool()))


def test_clr_with_filip_projects_every_token_and_keeps_the_pooled_pair():
    torch.manual_seed(0)
    model = build_model(clip_config(loss="filip"))
    batch = clip_batch(4)
    batch["attention_mask"] = torch.tensor([[1] * 6, [1] * 5 + [0], [1] * 6, [1] * 4 + [0] * 2])
    ctx = ForwardContext()
    out = model(batch, ctx)
    target = model.targets["clr"]
    (h0, h1), _ = model.encode(batch)
    t0 = F.normalize(target.projections[0](h0), dim=-1)
    t1 = F.normalize(target.projections[1](h1), dim=-1)
    sims = late_interaction(t0, batch["attention_mask"].bool(), t1, torch.ones(4, 5, dtype=torch.bool))
    assert torch.allclose(out.logits["clr"], target.scale() * sims, atol=1e-4)
    assert ctx.features["clr"][0].shape == (4, 8)  # pooled features still there for retrieval
    out.loss.backward()
    assert target.logit_scale.grad is not None and target.projections[1].weight.grad.abs().sum() > 0


def test_filip_options_are_checked():
    with pytest.raises(ConfigError, match="chunk_rows"):
        build_model(clip_config(loss="filip", chunk_rows=0))


def test_filip_learns_on_a_tiny_dual_model():
    """Eight fixed image-caption pairs: token-wise InfoNCE falls well below its start within 40 steps."""
    torch.manual_seed(0)
    model = build_model(clip_config(loss="filip"))
    batch = clip_batch(8)
    batch["attention_mask"] = (torch.arange(6)[None] < torch.tensor([6, 5, 6, 4, 6, 5, 6, 5])[:, None]).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert out.metrics["clr_accuracy"] > 0.9


# ------------------------------------------------------------------------------------ two gloo ranks
def _tokens():
    g = torch.Generator().manual_seed(5)
    t0 = F.normalize(torch.randn(6, 5, 4, generator=g), dim=-1)
    t1 = F.normalize(torch.randn(6, 3, 4, generator=g), dim=-1)
    lengths = torch.tensor([5, 4, 2, 3, 1, 2])  # rank 1's rows are at most 3 long: its sequences are shorter
    return t0, (torch.arange(5)[None] < lengths[:, None]).long(), t1


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        t0, m0, t1 = _tokens()
        rows, length = (slice(0, 3), 5) if rank == 0 else (slice(3, 6), 3)
        local0 = t0[rows, :length].clone().requires_grad_()
        local1 = t1[rows].clone().requires_grad_()
        scores = Filip(TargetConfig(type="clr", loss="filip"))(local0, m0[rows, :length], local1, None,
                                                               torch.tensor(5.0))
        scores.loss.backward()
        queue.put((rank, float(scores.loss), local0.grad.tolist(), local1.grad.tolist()))
    finally:
        dist.destroy_process_group()


def test_filip_gathers_tokens_of_different_lengths_like_one_big_batch():
    t0, m0, t1 = _tokens()
    t0, t1 = t0.clone().requires_grad_(), t1.clone().requires_grad_()
    full = Filip(TargetConfig(type="clr", loss="filip"))(t0, m0, t1, None, torch.tensor(5.0))
    full.loss.backward()
    results = run_two_ranks(_rank)
    assert abs((results[0][1] + results[1][1]) / 2 - full.loss.item()) < 1e-5
    # each rank's gradient sums both ranks' losses; DDP's mean over ranks halves it: the one-process gradient
    for rank, _, grad0, grad1 in results:
        rows, length = (slice(0, 3), 5) if rank == 0 else (slice(3, 6), 3)
        assert torch.allclose(torch.tensor(grad0) / 2, t0.grad[rows, :length], atol=1e-6)
        assert torch.allclose(torch.tensor(grad1) / 2, t1.grad[rows], atol=1e-6)
