"""RNN family and gated CNN encoders: causality, padding on either side, ELMo and GCNN models."""

from __future__ import annotations

import pytest
import torch

from modaloom.context import ForwardContext
from modaloom.encoders import build_encoder
from modaloom.encoders.rnn import reversed_real_order
from modaloom.errors import ConfigError
from modaloom.model import build_model
from modaloom.model_config import EncoderConfig

KINDS = ["rnn", "lstm", "gru", "birnn", "bilstm", "bigru"]


def make(kind: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = EncoderConfig(type=kind, hidden_size=12, layers_num=2, dropout=0.0, **extra)
    return build_encoder(cfg, 8).eval()


def inputs(length: int = 6) -> torch.Tensor:
    return torch.randn(2, length, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
def test_padding_on_either_side_does_not_change_real_outputs(kind):
    enc = make(kind)
    x = inputs()
    plain = enc(x, None, {}, ForwardContext())
    assert plain.shape == (2, 6, 12)
    right = torch.cat([x, torch.randn(2, 3, 8)], 1)
    right_mask = torch.tensor([[1] * 6 + [0] * 3] * 2)
    out = enc(right, right_mask, {}, ForwardContext())
    assert torch.allclose(out[:, :6], plain, atol=1e-5)
    assert not out[:, 6:].abs().sum()
    left = torch.cat([torch.randn(2, 2, 8), x], 1)
    left_mask = torch.tensor([[0] * 2 + [1] * 6] * 2)
    assert torch.allclose(enc(left, left_mask, {}, ForwardContext())[:, 2:], plain, atol=1e-5)


@pytest.mark.parametrize("kind", ["birnn", "bilstm", "bigru"])
def test_bidirectional_halves_see_only_their_side(kind):
    enc = make(kind)
    x = inputs()
    changed = x.clone()
    changed[:, 3] += 1.0
    a, b = enc(x, None, {}, ForwardContext()), enc(changed, None, {}, ForwardContext())
    forward_same = torch.isclose(a[..., :6], b[..., :6], atol=1e-6).all(-1).all(0)
    backward_same = torch.isclose(a[..., 6:], b[..., 6:], atol=1e-6).all(-1).all(0)
    assert forward_same.tolist() == [True, True, True, False, False, False]
    assert backward_same.tolist() == [False, False, False, False, True, True]


def test_reversed_order_reverses_real_tokens_only():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.bool)
    assert reversed_real_order(mask).tolist() == [[2, 1, 0, 3], [3, 2, 1, 0], [2, 0, 1, 3]]


def test_bidirectional_needs_even_width():
    with pytest.raises(ConfigError, match="hidden_size 11 is odd"):
        build_encoder(EncoderConfig(type="bilstm", hidden_size=11, layers_num=1), 8)


def test_gated_cnn_is_causal_and_ignores_padding():
    enc = make("gatedcnn", kernel_size=3, block_size=2)
    assert len(enc.layers) == 2 and enc.layers[0].conv.weight.shape == (24, 8, 3)
    x = inputs()
    changed = x.clone()
    changed[:, 4] += 1.0
    a, b = enc(x, None, {}, ForwardContext()), enc(changed, None, {}, ForwardContext())
    assert torch.allclose(a[:, :4], b[:, :4]) and not torch.allclose(a[:, 4], b[:, 4])
    left = torch.cat([torch.randn(2, 2, 8), x], 1)
    out = enc(left, torch.tensor([[0, 0] + [1] * 6] * 2), {}, ForwardContext())
    assert torch.allclose(out[:, 2:], a, atol=1e-5)


def test_gated_cnn_residual_every_block():
    enc = make("gatedcnn", kernel_size=2, block_size=2)  # layers_num=2: first layer + one, no residual yet
    deep = build_encoder(EncoderConfig(type="gatedcnn", hidden_size=12, layers_num=3, kernel_size=2, block_size=2,
                                       dropout=0.0), 8).eval()
    x = inputs()
    first = deep.layers[0](x.transpose(1, 2))
    expected = deep.layers[2](deep.layers[1](first)) + first
    assert torch.allclose(deep(x, None, {}, ForwardContext()), expected.transpose(1, 2), atol=1e-6)
    assert enc(x, None, {}, ForwardContext()).shape == (2, 6, 12)


def lm_batch(vocab: int = 30) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
            "lm_labels": torch.roll(ids, -1, 1), "bilm_labels_backward": torch.roll(ids, 1, 1)}


@pytest.mark.parametrize("encoder", [dict(type="bilstm", hidden_size=16, layers_num=2),
                                     dict(type="gru", hidden_size=16, layers_num=1),
                                     dict(type="gatedcnn", hidden_size=20, layers_num=5, kernel_size=3)])
def test_elmo_and_gcnn_language_models_train(encoder):
    target = dict(type="bilm" if encoder["type"].startswith("bi") else "lm", transform=False)
    model = build_model(dict(embedding=dict(parts=["word"], vocab_size=30, emb_size=16, norm="none"),
                             encoder=dict(encoder, dropout=0.0), targets=[target]))
    out = model(lm_batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent, silent
