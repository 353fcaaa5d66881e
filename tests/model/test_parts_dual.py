"""Dual embedding + dual encoder + clr: a tiny CLIP and a siamese text model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.model import build_model


def layer(width: int, **extra) -> dict:
    return dict(type="transformer", hidden_size=width, heads_num=2, layers_num=1, feedforward_size=2 * width,
                dropout=0.0, norm_position="pre", **extra)


def clip_config(**target) -> dict:
    text = dict(parts=["word", "pos"], vocab_size=30, emb_size=16, max_seq_length=8, norm="none", dropout=0.0)
    image = dict(parts=["patch", "pos"], emb_size=24, max_seq_length=5, image_height=8, image_width=8,
                 patch_size=4, patch_bias=False, norm="layernorm", dropout=0.0)
    clr = dict(type="clr", feature_size=8, poolings=["eos", "first"], **target)
    return dict(embedding=dict(parts=["dual"], streams=[text, image]),
                encoder=dict(type="dual", streams=[layer(16, mask="causal"), layer(24)]), targets=[clr])


def clip_batch(size: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (size, 6), generator=g)
    ids[:, 4] = 29  # eos: the largest id
    return {"input_ids": ids, "pixel_values": torch.randn(size, 3, 8, 8, generator=g)}


def test_clip_shapes_names_and_gradients():
    model = build_model(clip_config())
    names = set(model.state_dict())
    assert {"embedding.streams.0.parts.word.weight", "embedding.streams.1.parts.patch.projection.weight",
            "embedding.streams.1.norm.weight", "encoder.streams.1.stack.layers.0.self_attn.query.weight",
            "targets.clr.projections.0.weight", "targets.clr.logit_scale"} <= names
    assert "embedding.streams.1.parts.patch.projection.bias" not in names
    (h0, h1), masks = model.encode(clip_batch())
    assert h0.shape == (3, 6, 16) and h1.shape == (3, 5, 24)
    out = model(clip_batch())
    out.loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent, silent


def test_clr_loss_is_symmetric_cross_entropy_of_scaled_cosines():
    model = build_model(clip_config())
    ctx = ForwardContext()
    b = clip_batch()
    out = model(b, ctx)
    f0, f1 = ctx.features["clr"]
    assert torch.allclose(f0.norm(dim=-1), torch.ones(3))
    logits = math.exp(2.6592) * f0 @ f1.T
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert torch.allclose(out.logits["clr"], logits, atol=1e-4)
    acc = ((logits.argmax(1) == labels).float().mean() + (logits.argmax(0) == labels).float().mean()) / 2
    assert torch.allclose(out.metrics["clr_accuracy"], acc) and out.metrics["clr_count"] == 6


def test_eos_pooling_reads_the_largest_id():
    model = build_model(clip_config())
    b = clip_batch()
    ctx = ForwardContext()
    model(b, ctx)
    (h0, _), _ = model.encode(b)
    pooled = model.targets["clr"].projections[0](h0[:, 4])
    assert torch.allclose(ctx.features["clr"][0], F.normalize(pooled, dim=-1), atol=1e-6)


def test_logit_scale_is_clamped_at_100():
    model = build_model(clip_config(logit_scale_init=7.0))
    out = model(clip_batch())
    assert torch.allclose(out.metrics["clr_logit_scale"], torch.tensor(100.0))
    fixed = build_model(clip_config(learnable_scale=False))
    assert not fixed.targets["clr"].logit_scale.requires_grad


def test_siamese_stream_reads_its_own_keys():
    text = dict(parts=["word", "pos"], vocab_size=30, emb_size=16, max_seq_length=8, norm="none", dropout=0.0)
    cfg = dict(embedding=dict(parts=["dual"], streams=[text, dict(text, input_key="input_ids_b",
                                                                    mask_key="attention_mask_b")]),
               encoder=dict(type="dual", streams=[layer(16), layer(16)]),
               targets=[dict(type="clr", feature_size=8, poolings=["mean", "mean"])])
    model = build_model(cfg)
    model.embedding.streams[1].load_state_dict(model.embedding.streams[0].state_dict())
    model.encoder.streams[1].load_state_dict(model.encoder.streams[0].state_dict())
    ids = torch.randint(0, 30, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    (h0, h1), (m0, m1) = model.encode({"input_ids": ids, "attention_mask": mask, "input_ids_b": ids.flip(0),
                                       "attention_mask_b": mask.flip(0)})
    assert torch.equal(m1, mask.flip(0).bool())
    assert torch.allclose(h1[0, :3], h0[1, :3], atol=1e-6) and torch.allclose(h1[1], h0[0], atol=1e-6)


def test_dual_config_errors():
    cfg = clip_config()
    cfg["embedding"]["parts"] = ["dual", "pos"]
    with pytest.raises(ConfigError, match="'dual' must be the only embedding part"):
        build_model(cfg)
    single = dict(embedding=dict(parts=["word", "pos"], vocab_size=30, emb_size=16), encoder=layer(16),
                  targets=[dict(type="clr", feature_size=8)])
    with pytest.raises(ConfigError, match="clr target needs a dual model"):
        build_model(single)({"input_ids": torch.ones(2, 3, dtype=torch.long)})
