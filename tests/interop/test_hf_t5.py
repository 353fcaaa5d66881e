"""T5 / T5 v1.1 parity: a random tiny transformers model, converted, gives the same outputs; exports round-trip."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.errors import ConfigError  # noqa: E402
from modaloom.interop.hf import hf_to_modaloom, modaloom_to_hf  # noqa: E402
from tests.interop.hf_parity import assert_same_state, perturb, seq2seq_diffs  # noqa: E402

TOL = 1e-4


def make_t5(v1_1: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if v1_1 else {}
    config = transformers.T5Config(vocab_size=97, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3,
                                   num_heads=4, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20, **kwargs)
    model = transformers.T5ForConditionalGeneration(config).eval()
    perturb(model)
    if v1_1:  # a real v1.1 checkpoint has an output layer of its own
        model.lm_head.weight = torch.nn.Parameter(torch.randn(97, 32))
    return model


def inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 97, (2, 30), generator=gen)  # 30 > max_distance: the log buckets are exercised
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0
    return ids, mask, torch.randint(2, 97, (2, 9), generator=gen)


def compare(hf, model) -> dict[str, float]:
    return seq2seq_diffs(hf, model, *inputs())


@pytest.mark.parametrize("v1_1", [False, True], ids=["t5", "t5-v1_1"])
def test_t5_parity_and_round_trip(tmp_path, v1_1):
    hf = make_t5(v1_1)
    model = hf_to_modaloom(hf)
    lm = model.config.targets[0]
    assert lm.tie_weights is not v1_1 and lm.scale_before_output is not v1_1
    diffs = compare(hf, model)
    assert max(diffs.values()) < TOL, diffs

    modaloom_to_hf(model, tmp_path / "hf")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.config.scale_decoder_outputs is not v1_1
    assert_same_state(reloaded.state_dict(), hf.state_dict())
    assert max(compare(reloaded, model).values()) < TOL

    # and back from the exported folder
    again = hf_to_modaloom(tmp_path / "hf")
    assert_same_state(again.state_dict(), model.state_dict())


def test_t5_export_refuses_what_t5_cannot_express():
    model = hf_to_modaloom(make_t5(False))
    model.config.encoder.norm_position = "post"
    with pytest.raises(ConfigError, match="model.encoder.norm_position is 'post' but t5 only has 'pre'"):
        modaloom_to_hf(model, "/nonexistent/never-written", model_type="t5")
