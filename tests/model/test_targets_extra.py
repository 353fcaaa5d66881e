"""bilm, itm and clr target details: the loss math, label keys, and clr's cross-rank gathering."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from modaloom.context import ForwardContext
from modaloom.model import build_model
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.targets.bilm import BidirectionalLanguageModel
from modaloom.targets.contrastive import Contrastive
from modaloom.targets.itm import ImageTextMatching
from tests.model.two_ranks import run_two_ranks


def test_bilm_forward_half_predicts_next_and_backward_half_previous():
    torch.manual_seed(0)
    target = BidirectionalLanguageModel(TargetConfig(type="bilm", transform=False, vocab_size=11), ModelConfig(), 8)
    hidden = torch.randn(2, 5, 8)
    fwd = torch.randint(0, 11, (2, 5))
    bwd = torch.randint(0, 11, (2, 5))
    fwd[1, 3:] = -100
    out = target(hidden, None, {"lm_labels": fwd, "bilm_labels_backward": bwd}, ForwardContext())
    f = F.cross_entropy(target.head.output(hidden[..., :4]).reshape(-1, 11), fwd.reshape(-1), ignore_index=-100)
    b = F.cross_entropy(target.head.output(hidden[..., 4:]).reshape(-1, 11), bwd.reshape(-1))
    assert torch.allclose(out.loss, (f + b) / 2, atol=1e-6)
    assert out.metrics["bilm_forward_count"] == 8 and out.metrics["bilm_count"] == 18
    without = target(hidden, None, {}, ForwardContext())
    assert without.loss is None and without.logits.shape == (2, 2, 5, 11)


def test_itm_reads_itm_labels_from_the_first_token():
    torch.manual_seed(0)
    target = ImageTextMatching(TargetConfig(type="itm"), ModelConfig(), 6)
    hidden = torch.randn(3, 4, 6)
    labels = torch.tensor([1, 0, 1])
    out = target(hidden, None, {"itm_labels": labels, "labels": torch.tensor([0, 0, 0])}, ForwardContext())
    logits = target.output(target.pooler(hidden[:, 0]))  # the pooler is dense + tanh
    assert torch.allclose(out.logits, logits)
    assert torch.allclose(out.loss, F.cross_entropy(logits, labels))
    assert target(hidden, None, {}, ForwardContext()).loss is None


def _clr(seed: int = 0) -> Contrastive:
    torch.manual_seed(seed)
    return Contrastive(TargetConfig(type="clr", feature_size=4, poolings=["first", "first"]), ModelConfig(), (6, 5))


def _features(size: int = 6):
    g = torch.Generator().manual_seed(3)
    return torch.randn(size, 2, 6, generator=g), torch.randn(size, 2, 5, generator=g)


def _rank(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        target = _clr()
        h0, h1 = _features()
        rows = slice(0, 3) if rank == 0 else slice(3, 6)
        out = target((h0[rows], h1[rows]), None, {}, ForwardContext())
        out.loss.backward()
        grad = target.projections[0].weight.grad.clone()
        dist.all_reduce(grad)
        queue.put((rank, float(out.loss), (grad / 2).tolist()))
    finally:
        dist.destroy_process_group()


def test_clr_gathers_across_ranks_like_one_big_batch():
    target = _clr()
    h0, h1 = _features()
    full = target((h0, h1), None, {}, ForwardContext())
    full.loss.backward()
    results = run_two_ranks(_rank)
    # Every rank's loss covers its own rows against all rows; their mean is the single-process loss.
    assert abs((results[0][1] + results[1][1]) / 2 - full.loss.item()) < 1e-5
    # DDP averages gradients over ranks; gathering with gradients makes that the single-process gradient.
    expected = target.projections[0].weight.grad
    for _, _, grad in results:
        assert torch.allclose(torch.tensor(grad), expected, atol=1e-6)


def test_clr_on_a_model_without_gather_matches_gathered_when_alone():
    text = dict(parts=["word"], vocab_size=20, emb_size=8, norm="none", dropout=0.0)
    enc = dict(type="gru", hidden_size=8, layers_num=1, dropout=0.0)
    cfg = dict(embedding=dict(parts=["dual"], streams=[text, dict(text, input_key="input_ids_b")]),
               encoder=dict(type="dual", streams=[enc, enc]),
               targets=[dict(type="clr", feature_size=4, poolings=["last", "max"], gather=False)])
    model = build_model(cfg)
    batch = {"input_ids": torch.randint(0, 20, (3, 4)), "input_ids_b": torch.randint(0, 20, (3, 5))}
    out = model(batch)
    model.targets["clr"].cfg.gather = True
    assert torch.allclose(model(batch).loss, out.loss)


def test_eos_pooling_by_id_or_largest_id():
    from modaloom.targets.base import pool

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    ids = torch.tensor([[5, 9, 3, 0], [5, 3, 7, 9]])
    assert pool(hidden, None, "eos", input_ids=ids).flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, None, "eos", input_ids=ids, eos_id=3).flatten().tolist() == [2.0, 5.0]
