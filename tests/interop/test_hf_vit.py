"""ViT parity: a random tiny transformers model, converted, gives the same outputs; exports round-trip."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.interop.hf import hf_to_modaloom, modaloom_to_hf  # noqa: E402
from tests.interop.hf_parity import assert_same_state, perturb  # noqa: E402

TOL = 1e-4


def make_vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                                    image_size=16, patch_size=4, num_channels=3, num_labels=5)
    model = transformers.ViTForImageClassification(config).eval()
    perturb(model)
    return model


def compare(hf, model) -> dict[str, float]:
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        out = model({"pixel_values": pixels})
        hidden, _ = model.encode({"pixel_values": pixels})
    last = hf.vit.layernorm(ref.hidden_states[-1])
    return {"hidden": (hidden - last).abs().max().item(),
            "logits": (out.logits["cls"] - ref.logits).abs().max().item()}


def test_vit_parity_and_round_trip(tmp_path):
    hf = make_vit()
    model = hf_to_modaloom(hf)
    diffs = compare(hf, model)
    assert max(diffs.values()) < TOL, diffs

    modaloom_to_hf(model, tmp_path / "hf")
    reloaded = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert_same_state(reloaded.state_dict(), hf.state_dict())
    assert max(compare(reloaded, model).values()) < TOL


def test_vit_reads_the_on_disk_layout(tmp_path):
    """save_pretrained writes the older names (encoder.layer.N.attention.attention.query); they load too."""
    hf = make_vit()
    hf.save_pretrained(tmp_path / "saved")
    model = hf_to_modaloom(tmp_path / "saved")
    assert max(compare(hf, model).values()) < TOL
