"""Speech2Text parity: a random tiny transformers model, converted, gives the same outputs; exports round-trip."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.interop.hf import hf_to_modaloom, modaloom_to_hf  # noqa: E402
from tests.interop.hf_parity import assert_same_state, perturb  # noqa: E402

TOL = 1e-4


def make_s2t():
    torch.manual_seed(0)
    config = transformers.Speech2TextConfig(
        vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=40, decoder_ffn_dim=44,
        encoder_attention_heads=4, decoder_attention_heads=2, max_source_positions=64, max_target_positions=32,
        conv_channels=24, conv_kernel_sizes=[5, 3], input_feat_per_channel=10, input_channels=1)
    model = transformers.Speech2TextForConditionalGeneration(config).eval()
    perturb(model)
    return model


def compare(hf, model) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 40, 10, generator=gen)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 29:] = 0
    dec = torch.randint(3, 97, (2, 7), generator=gen)
    batch = {"input_features": features, "feature_mask": mask, "decoder_input_ids": dec}
    with torch.no_grad():
        ref = hf(input_features=features, attention_mask=mask, decoder_input_ids=dec)
        out = model(batch)
        enc, enc_mask = model.encode(batch)
    real = enc_mask.bool() if enc_mask is not None else torch.ones(enc.shape[:2], dtype=torch.bool)
    return {"encoder": (enc - ref.encoder_last_hidden_state)[real].abs().max().item(),
            "logits": (out.logits["lm"] - ref.logits).abs().max().item()}


def test_s2t_parity_and_round_trip(tmp_path):
    hf = make_s2t()
    model = hf_to_modaloom(hf)
    diffs = compare(hf, model)
    assert max(diffs.values()) < TOL, diffs

    modaloom_to_hf(model, tmp_path / "hf")
    reloaded = transformers.Speech2TextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert_same_state(reloaded.state_dict(), hf.state_dict())
    assert max(compare(reloaded, model).values()) < TOL
