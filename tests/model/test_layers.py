"""Layer-level checks: masks, attention against a manual softmax, GQA, kv cache, positions."""

import math

import pytest
import torch

from modaloom.layers.attention import KVCache, MultiHeadAttention
from modaloom.layers.masks import additive_mask
from modaloom.layers.positions import (
    RelativePositionBias,
    Rotary,
    alibi_slopes,
    apply_rotary,
    sinusoidal_table,
)


def manual_attention(attn: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, n, _ = x.shape
    q = attn.query(x).view(b, n, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.key(x).view(b, n, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.value(x).view(b, n, attn.kv_heads, attn.head_dim).transpose(1, 2)
    rep = attn.heads // attn.kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2)
    if attn.scale is None:
        scores = scores / math.sqrt(attn.head_dim)
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(-1) @ v
    return attn.output(out.transpose(1, 2).reshape(b, n, -1))


def test_additive_mask_combines_padding_and_causal():
    key_mask = torch.tensor([[1, 1, 1, 0]])
    m = additive_mask(key_mask, 4, 4, torch.float32, torch.device("cpu"), causal=True)
    allowed = m[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_prefix_mask_makes_prefix_fully_visible():
    m = additive_mask(None, 5, 5, torch.float32, torch.device("cpu"), causal=True,
                      prefix_lengths=torch.tensor([3]))
    allowed = (m[0, 0] == 0).int()
    assert allowed[0].tolist() == [1, 1, 1, 0, 0]  # prefix query sees the whole prefix
    assert allowed[3].tolist() == [1, 1, 1, 1, 0]  # target query is causal
    assert allowed[4].tolist() == [1, 1, 1, 1, 1]


def test_no_mask_needed_returns_none():
    assert additive_mask(None, 3, 3, torch.float32, torch.device("cpu")) is None


@pytest.mark.parametrize("kv_heads,scale", [(4, True), (2, True), (1, False)])
def test_attention_matches_manual_softmax(kv_heads, scale):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, 8, kv_heads=kv_heads, scale=scale).eval()
    x = torch.randn(2, 6, 32)
    key_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    mask = additive_mask(key_mask, 6, 6, torch.float32, torch.device("cpu"), causal=True)
    got = attn(x, bias=mask)
    want = manual_attention(attn, x, mask)
    assert torch.allclose(got, want, atol=1e-5)


def test_kv_cache_incremental_equals_full_causal():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2, 8, kv_heads=1).eval()
    x = torch.randn(1, 5, 16)
    full = attn(x, is_causal=True)
    cache = KVCache()
    steps = [attn(x[:, i:i + 1], cache=cache) for i in range(5)]
    assert cache.length == 5
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_offset():
    rot = Rotary(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rot(1, pq, torch.device("cpu"), torch.float32)
        ck, sk = rot(1, pk, torch.device("cpu"), torch.float32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_relative_buckets_match_t5_definition():
    from transformers.models.t5.modeling_t5 import T5Attention

    bias = RelativePositionBias(heads=2, buckets=32, max_distance=128, bidirectional=True)
    rel = torch.arange(-200, 200)[None, :]
    want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(bias._bucket(rel), want)
    causal = RelativePositionBias(heads=2, bidirectional=False)
    want = T5Attention._relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert torch.equal(causal._bucket(rel), want)


def test_alibi_slopes_are_geometric():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert len(alibi_slopes(12)) == 12


def test_sinusoidal_table_layout():
    t = sinusoidal_table(4, 6)
    assert t.shape == (4, 6)
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
