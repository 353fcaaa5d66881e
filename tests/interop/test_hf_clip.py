"""CLIP parity: a random tiny CLIPModel, converted, gives the same outputs; the export round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from modaloom import registry
from modaloom.context import ForwardContext

transformers = pytest.importorskip("transformers")
if not {"patch", "dual"} <= set(registry.names("embedding")) or "clr" not in registry.names("target"):
    pytest.skip("the patch/dual embedding parts or the clr target are not registered yet", allow_module_level=True)

from modaloom.errors import ConfigError  # noqa: E402
from modaloom.interop.hf import convert_from_hf, hf_to_modaloom, modaloom_to_hf  # noqa: E402
from tests.interop.hf_parity import TOL, max_diff, perturb  # noqa: E402

VOCAB, PAD, EOS = 99, 1, 98


def make_clip(eos_token_id: int = 2, text_layers: int = 2):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=text_layers,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=PAD, bos_token_id=0,
                         eos_token_id=eos_token_id),
        vision_config=dict(hidden_size=40, intermediate_size=44, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, num_channels=3),
        projection_dim=24,
    )
    return perturb(transformers.CLIPModel(config))


def inputs():
    """Text rows of length 9 ending in EOS (the largest id), the second right-padded after its EOS at 5."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, EOS, (2, 9), generator=gen)
    ids[0, 8] = EOS
    ids[1, 5] = EOS
    ids[1, 6:] = PAD
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def compare(hf, model) -> dict[str, float]:
    batch = inputs()
    real = batch["attention_mask"].bool()
    ctx = ForwardContext()
    with torch.no_grad():
        ref = hf(**batch)
        pooled = hf.vision_model(pixel_values=batch["pixel_values"]).pooler_output  # before the projection
        out = model(batch, ctx)
        hidden, _ = model.encode(batch)
    text_features, image_features = ctx.features["clr"]
    return {
        "text hidden": max_diff(hidden[0], ref.text_model_output.last_hidden_state, real),
        "image pooled": max_diff(hidden[1][:, 0], pooled),
        "text embeds": max_diff(text_features, ref.text_embeds),
        "image embeds": max_diff(image_features, ref.image_embeds),
        "logits_per_image": max_diff(out.logits["clr"].T, ref.logits_per_image),
    }


def test_clip_parity_and_round_trip(tmp_path):
    hf = make_clip()
    conv = convert_from_hf(hf)
    assert conv.random_init == []
    diffs = compare(hf, conv.model)
    assert max(diffs.values()) < TOL, diffs

    export = modaloom_to_hf(conv.model, tmp_path / "hf")
    assert export.architecture == "CLIPModel" and export.dropped == []
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    original, state = hf.state_dict(), reloaded.state_dict()
    assert sorted(state) == sorted(original)
    for key, value in original.items():
        assert torch.equal(state[key], value), key
    batch = inputs()
    with torch.no_grad():
        a, b = hf(**batch), reloaded(**batch)
    for name in ("logits_per_image", "text_embeds", "image_embeds"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name

    # The exported folder converts back to the same modaloom weights.
    again = hf_to_modaloom(tmp_path / "hf").state_dict()
    for key, value in conv.model.state_dict().items():
        assert torch.equal(again[key], value), key


def test_clip_eos_conventions():
    """eos_token_id = vocab_size - 1 (first occurrence == largest id) matches too; other ids are refused."""
    hf = make_clip(eos_token_id=EOS, text_layers=1)
    assert max(compare(hf, hf_to_modaloom(hf)).values()) < TOL
    with pytest.raises(ConfigError, match="eos_token_id"):
        hf_to_modaloom(make_clip(eos_token_id=50, text_layers=1))


def test_clip_old_checkpoints_with_position_ids_load():
    hf = make_clip(text_layers=1)
    state = dict(hf.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]

    class Old(torch.nn.Module):
        config = hf.config

        def state_dict(self):
            return state

    model = hf_to_modaloom(Old(), architecture="CLIPModel")
    assert max(compare(hf, model).values()) < TOL
