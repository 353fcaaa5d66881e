"""CLIP parity: a random tiny CLIPModel, converted, gives the same outputs; the export round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from modaloom import registry
from modaloom.context import ForwardContext

transformers = pytest.importorskip("transformers")
if not {"patch", "dual"} <= set(registry.names("embedding")) or "clr" not in registry.names("target"):
    pytest.skip("the patch/dual embedding parts or the clr target are not registered yet", allow_module_level=True)

from modaloom.config_schema import to_dict  # noqa: E402
from modaloom.errors import ConfigError  # noqa: E402
from modaloom.interop.hf import convert_from_hf, hf_to_modaloom, modaloom_to_hf  # noqa: E402
from modaloom.model import build_model  # noqa: E402
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


def inputs(eos: int = EOS):
    """Text rows of length 9 ending in ``eos`` (the largest id unless given), the second right-padded after
    its EOS at 5; ``eos`` occurs nowhere else."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, EOS, (2, 9), generator=gen)
    ids[ids == eos] = eos + 1
    ids[0, 8] = eos
    ids[1, 5] = eos
    ids[1, 6:] = PAD
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def compare(hf, model, eos: int = EOS) -> dict[str, float]:
    batch = inputs(eos)
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
    """eos_token_id 2 is the legacy largest-id rule (eos_id None); any other id is the clr target's eos_id."""
    assert hf_to_modaloom(make_clip(text_layers=1)).config.targets[0].eos_id is None
    hf = make_clip(eos_token_id=EOS, text_layers=1)
    model = hf_to_modaloom(hf)
    assert model.config.targets[0].eos_id == EOS
    assert max(compare(hf, model).values()) < TOL
    with pytest.raises(ConfigError, match="eos_token_id=120"):
        hf_to_modaloom(make_clip(eos_token_id=120, text_layers=1))


def test_clip_explicit_eos_id_matches_after_import_and_export(tmp_path):
    """EOS 50 is not the largest id of the rows: pooling must follow eos_id both ways."""
    eos = 50
    batch = inputs(eos)
    rows = torch.arange(2)
    eos_at = (batch["input_ids"] == eos).int().argmax(-1)
    assert (batch["input_ids"].argmax(-1) != eos_at).all()  # the legacy rule would pool elsewhere

    hf = make_clip(eos_token_id=eos)
    model = hf_to_modaloom(hf)  # import
    assert model.config.targets[0].eos_id == eos
    assert max(compare(hf, model, eos).values()) < TOL

    # export a model whose eos_id was set in modaloom (built from a legacy import, then given eos_id 50)
    legacy = hf_to_modaloom(make_clip())
    data = to_dict(legacy.config)
    data["targets"][0]["eos_id"] = eos
    ours = build_model(data)
    ours.load_state_dict(legacy.state_dict())
    ours.eval()
    modaloom_to_hf(ours, tmp_path / "hf")
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.config.text_config.eos_token_id == eos
    diffs = compare(reloaded, ours, eos)
    assert max(diffs.values()) < TOL, diffs
    with torch.no_grad():  # and HF pools at the EOS, not at the largest id
        hidden = reloaded.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(hidden.pooler_output, hidden.last_hidden_state[rows, eos_at])


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


def test_clip_with_a_moco_target_exports_as_clr(tmp_path):
    """A moco model's towers, projections and logit_scale become CLIPModel's; the momentum state is not exported."""
    from modaloom.train.hooks import part_hooks

    conv = convert_from_hf(make_clip())
    data = to_dict(conv.model.config)
    data["targets"][0].update(type="moco", loss="moco_infonce", momentum=0.9, queue_size=4)
    data["targets"][0].pop("gather", None)
    model = build_model(data)
    model.load_state_dict({k.replace("targets.clr.", "targets.moco."): v for k, v in conv.model.state_dict().items()})
    part_hooks(model)  # a training run's momentum copies and queues: hook state, not model weights
    export = modaloom_to_hf(model, tmp_path / "hf")
    assert export.architecture == "CLIPModel" and export.dropped == []
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    batch, ctx = inputs(), ForwardContext()
    model.eval()
    with torch.no_grad():
        ref = reloaded(**batch)
        model(batch, ctx)
    text_features, image_features = ctx.features["moco"]
    assert max_diff(text_features, ref.text_embeds) < TOL
    assert max_diff(image_features, ref.image_embeds) < TOL
    assert reloaded.logit_scale.item() == pytest.approx(model.targets["moco"].logit_scale.item())
