"""Model growth: deeper and wider-feed-forward models that compute the original function where promised."""

from __future__ import annotations

import pytest
import torch

from modaloom.errors import ConfigError
from modaloom.growth import grow_model
from modaloom.model import build_model
from tests.model.test_parts_dual import clip_batch, clip_config

VOCAB, L = 40, 10


def lm_config(norm_position: str = "pre", gated: bool = False, layers: int = 2) -> dict:
    encoder = dict(hidden_size=16, layers_num=layers, heads_num=2, feedforward_size=24, norm_position=norm_position,
                   mask="causal", dropout=0.0)
    if gated:
        encoder.update(feed_forward="gated", act="silu", norm="rms", bias=False, position="rotary")
    parts = ["word"] if gated else ["word", "pos"]
    return dict(embedding=dict(parts=parts, vocab_size=VOCAB, emb_size=16, max_seq_length=L, dropout=0.0),
                encoder=encoder, targets=[dict(type="lm")])


def lm_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, L), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "lm_labels": ids}


def trained(cfg: dict):
    """A model whose weights are all away from their initial values (zero biases included)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def logits(model, batch):
    with torch.no_grad():
        return model(batch).logits


def assert_same_outputs(a, b, batch):
    for name, value in logits(a, batch).items():
        torch.testing.assert_close(logits(b, batch)[name], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gated", [False, True], ids=["gpt2-like", "llama-like"])
def test_pre_norm_depth_and_ffn_growth_preserve_the_function(gated):
    model = trained(lm_config(gated=gated))
    batch = lm_batch()
    for depth, ffn in ((3, None), (0, 40), (2, 48)):
        growth = grow_model(model, depth=depth, ffn_size=ffn)
        grown = growth.model.eval()
        assert growth.function_preserving
        assert grown.config.encoder.layers_num == 2 + depth
        assert grown.config.encoder.feedforward_size == (ffn or 24)
        assert_same_outputs(model, grown, batch)
        state = grown.state_dict()
        if depth:  # the new layers are copies of the stack with zero output projections
            torch.testing.assert_close(state["encoder.stack.layers.2.self_attn.query.weight"][:, :],
                                       model.state_dict()["encoder.stack.layers.0.self_attn.query.weight"])
            assert not state["encoder.stack.layers.3.feed_forward.linear_out.weight"].any()
            assert not state["encoder.stack.layers.2.self_attn.output.weight"].any()
        if ffn:  # the new units have non-zero inputs (they will learn) and zero outputs
            assert state["encoder.stack.layers.0.feed_forward.linear_in.weight"][24:].abs().sum() > 0
            assert not state["encoder.stack.layers.0.feed_forward.linear_out.weight"][:, 24:].any()


def test_the_grown_model_trains_its_new_layers():
    model = trained(lm_config())
    grown = grow_model(model, depth=1).model.train()
    grown(lm_batch()).loss.backward()
    out = grown.encoder.stack.layers[2].feed_forward.linear_out.weight
    assert out.grad is not None and out.grad.abs().sum() > 0  # zero outputs still get a gradient


def test_post_norm_ffn_growth_preserves_depth_growth_stacks():
    model = trained(lm_config(norm_position="post"))
    batch = lm_batch()
    wider = grow_model(model, ffn_size=32)
    assert wider.function_preserving
    assert_same_outputs(model, wider.model.eval(), batch)
    deeper = grow_model(model, depth=2)
    assert not deeper.function_preserving and deeper.stacks[0].mode == "stack"
    state, old = deeper.model.state_dict(), model.state_dict()
    for key in ("self_attn.output.weight", "feed_forward.linear_out.weight", "self_attn_norm.weight"):
        assert torch.equal(state[f"encoder.stack.layers.3.{key}"], old[f"encoder.stack.layers.1.{key}"])
    assert "not function-preserving" in deeper.stacks[0].describe()
    with pytest.raises(ConfigError, match="post-norm stack: a new layer cannot be the identity"):
        grow_model(model, depth=1, mode="identity")


def test_one_stream_of_a_dual_model_grows_and_keeps_its_embeddings():
    cfg = clip_config()
    for stream in cfg["encoder"]["streams"]:
        stream.update(norm_position="pre", dropout=0.0)
    model = trained(cfg)
    batch = clip_batch(3)
    growth = grow_model(model, depth=2, ffn_size=64, streams=[1])  # the image stream: 1 layer, 48 units
    assert [s.where for s in growth.stacks] == ["encoder.streams.1"]
    assert growth.overrides == ["model.encoder.streams.1.layers_num=3", "model.encoder.streams.1.feedforward_size=64"]
    assert growth.model.config.encoder.streams[0].layers_num == 1
    assert_same_outputs(model, growth.model.eval(), batch)


def test_growth_refusals():
    model = trained(lm_config())
    with pytest.raises(ConfigError, match="nothing to grow"):
        grow_model(model)
    with pytest.raises(ConfigError, match="only widens"):
        grow_model(model, ffn_size=8)
    with pytest.raises(ConfigError, match="--stream is for dual encoders"):
        grow_model(model, depth=1, streams=[0])
    with pytest.raises(ConfigError, match="depth mode 'zero'"):
        grow_model(model, depth=1, mode="zero")
    shared = lm_config()
    shared["encoder"]["share_layers"] = True
    with pytest.raises(ConfigError, match="ALBERT"):
        grow_model(build_model(shared), depth=1)
