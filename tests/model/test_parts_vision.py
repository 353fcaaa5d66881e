"""Image parts: patch, masked_patch, drop_masked, word_patch; tiny ViT, BEiT, MAE and ViLT models."""

from __future__ import annotations

import pytest
import torch

from modaloom.context import ForwardContext
from modaloom.errors import ConfigError, DataError
from modaloom.model import build_model
from modaloom.targets.mae import patchify

IMAGE = dict(image_height=8, image_width=12, patch_size=4, channels=3)  # 2 x 3 = 6 patches
N = 6


def encoder(width: int = 16) -> dict:
    return dict(type="transformer", hidden_size=width, heads_num=2, layers_num=1, feedforward_size=24,
                dropout=0.0, norm_position="pre")


def embedding(parts: list[str], **extra) -> dict:
    return dict(parts=parts, emb_size=16, max_seq_length=N + 1, dropout=0.0, norm="none", **IMAGE, **extra)


def pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 12, generator=torch.Generator().manual_seed(seed))


PATCH_MASK = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)


def check_trains(model, batch) -> None:
    out = model(batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent, silent


def test_patch_embedding_is_class_token_then_linear_patches_plus_positions():
    model = build_model(dict(embedding=embedding(["patch", "pos"]), encoder=encoder(), targets=[dict(type="cls")]))
    part = model.embedding.parts["patch"]
    x = pixels()
    out, mask = model.embedding({"pixel_values": x}, ForwardContext())
    assert out.shape == (2, N + 1, 16) and mask is None
    flat = patchify(x, 4)  # (B, N, p*p*C) in (row, column, channel) order
    weight = part.projection.weight.permute(0, 2, 3, 1).reshape(16, -1)  # (E, p, p, C) -> (E, p*p*C)
    expected = flat @ weight.T + part.projection.bias
    positions = model.embedding.parts["pos"].weight
    assert torch.allclose(out[:, 1:], expected + positions[1:], atol=1e-5)
    assert torch.allclose(out[:, 0], part.cls_token + positions[0], atol=1e-6)


def test_vit_trains_and_names_parameters_for_conversion():
    model = build_model(dict(embedding=embedding(["patch", "pos"]), encoder=encoder(), targets=[dict(type="cls")]))
    names = set(model.state_dict())
    assert {"embedding.parts.patch.cls_token", "embedding.parts.patch.projection.weight",
            "embedding.parts.patch.projection.bias", "embedding.parts.pos.weight"} <= names
    check_trains(model, {"pixel_values": pixels(), "labels": torch.tensor([0, 1])})


def test_patch_without_bias_or_class_token():
    model = build_model(dict(embedding=embedding(["patch", "pos"], patch_bias=False, cls_token=False),
                             encoder=encoder(), targets=[dict(type="cls", pooling="mean")]))
    assert model.embedding.parts["patch"].projection.bias is None
    out, _ = model.embedding({"pixel_values": pixels()}, ForwardContext())
    assert out.shape == (2, N, 16)


def test_too_few_positions_and_wrong_image_size_are_named():
    with pytest.raises(ConfigError, match="max_seq_length is 6; raise it to at least 7"):
        build_model(dict(embedding=embedding(["patch", "pos"]) | {"max_seq_length": 6}, encoder=encoder(),
                         targets=[dict(type="cls")]))
    model = build_model(dict(embedding=embedding(["patch", "pos"]), encoder=encoder(), targets=[dict(type="cls")]))
    with pytest.raises(DataError, match=r"\(B, 3, 8, 12\).*got \(2, 3, 8, 8\)"):
        model({"pixel_values": torch.randn(2, 3, 8, 8)})


def test_masked_patch_replaces_masked_patches_with_the_mask_token():
    cfg = dict(embedding=embedding(["masked_patch", "pos"]), encoder=encoder(),
               targets=[dict(type="mae", patch_size=4, image_vocab_size=7)])
    model = build_model(cfg)
    x = pixels()
    plain, _ = model.embedding({"pixel_values": x}, ForwardContext())
    masked, _ = model.embedding({"pixel_values": x, "patch_mask": PATCH_MASK}, ForwardContext())
    part, positions = model.embedding.parts["masked_patch"], model.embedding.parts["pos"].weight
    body, plain_body = masked[:, 1:], plain[:, 1:]
    assert torch.allclose(body[PATCH_MASK], (part.mask_token + positions[1:]).expand(2, N, 16)[PATCH_MASK])
    assert torch.equal(body[~PATCH_MASK], plain_body[~PATCH_MASK])
    assert torch.equal(masked[:, 0], plain[:, 0])


def test_beit_classifies_visual_tokens_of_masked_patches_only():
    model = build_model(dict(embedding=embedding(["masked_patch", "pos"]), encoder=encoder(),
                             targets=[dict(type="mae", patch_size=4, image_vocab_size=7)]))
    labels = torch.where(PATCH_MASK, torch.arange(N).repeat(2, 1), torch.tensor(-100))
    batch = {"pixel_values": pixels(), "patch_mask": PATCH_MASK, "image_token_labels": labels}
    out = model(batch)
    assert out.metrics["mae_count"] == int(PATCH_MASK.sum())
    assert out.logits["mae"].shape == (int(PATCH_MASK.sum()), 7)
    check_trains(build_model(dict(embedding=embedding(["masked_patch", "pos"]), encoder=encoder(),
                                  targets=[dict(type="mae", patch_size=4, image_vocab_size=7)])), batch)


def test_drop_masked_keeps_visible_patches_with_their_own_positions():
    model = build_model(dict(embedding=embedding(["patch", "pos", "drop_masked"]), encoder=encoder(),
                             targets=[dict(type="cls")]))
    mask = torch.tensor([[1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    x = pixels()
    full, _ = build_embedding_without_drop(model)({"pixel_values": x}, ForwardContext())
    ctx = ForwardContext()
    kept, mask_out = model.embedding({"pixel_values": x, "patch_mask": mask}, ctx)
    assert mask_out is None and kept.shape == (2, 1 + 3, 16)
    assert ctx.kept_patch_index.tolist() == [[1, 3, 5], [0, 1, 5]]
    for row, index in enumerate(ctx.kept_patch_index):
        assert torch.equal(kept[row, 1:], full[row, 1 + index])
        assert torch.equal(kept[row, 0], full[row, 0])


def build_embedding_without_drop(model):
    """The same weights without drop_masked: a view of the embedding that stops after pos."""
    emb = model.embedding

    def run(batch, ctx):
        x, mask = None, None
        for name in ("patch", "pos"):
            x, mask = emb.parts[name](x, mask, batch, ctx)
        return x, mask
    return run


def test_drop_masked_refuses_uneven_rows_and_bad_orders():
    model = build_model(dict(embedding=embedding(["patch", "pos", "drop_masked"]), encoder=encoder(),
                             targets=[dict(type="cls")]))
    uneven = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    with pytest.raises(DataError, match="same number of masked patches"):
        model({"pixel_values": pixels(), "patch_mask": uneven})
    with pytest.raises(ConfigError, match="must come last"):
        build_model(dict(embedding=embedding(["patch", "drop_masked", "pos"]), encoder=encoder(),
                         targets=[dict(type="cls")]))
    with pytest.raises(ConfigError, match="masked_patch .* drop_masked"):
        build_model(dict(embedding=embedding(["masked_patch", "pos", "drop_masked"]), encoder=encoder(),
                         targets=[dict(type="cls")]))


def mae_config(**target) -> dict:
    mae = dict(type="mae", patch_size=4, norm_pix_loss=True, decoder_layers_num=1, decoder_hidden_size=8,
               decoder_heads_num=2, decoder_feedforward_size=16, **target)
    return dict(embedding=embedding(["patch", "pos", "drop_masked"]), encoder=encoder(), targets=[mae])


def test_mae_regresses_normalised_pixels_of_masked_patches_only():
    torch.manual_seed(0)
    model = build_model(mae_config())
    x = pixels()
    out = model({"pixel_values": x, "patch_mask": PATCH_MASK})
    prediction = out.logits["mae"]
    assert prediction.shape == (2, N, 4 * 4 * 3)
    target = patchify(x, 4)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((prediction - target) ** 2).mean(-1)[PATCH_MASK].mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.metrics["mae_count"] == int(PATCH_MASK.sum())
    check_trains(build_model(mae_config()), {"pixel_values": x, "patch_mask": PATCH_MASK})


def test_mae_with_dropped_patches_needs_a_decoder():
    cfg = mae_config()
    cfg["targets"][0]["decoder_layers_num"] = 0
    with pytest.raises(ConfigError, match="decoder_layers_num > 0"):
        build_model(cfg)


def test_patchify_layout_is_row_column_channel():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # C=2, 4x4, patches of 2
    p = patchify(x, 2)
    assert p.shape == (1, 4, 8)
    # first patch: rows 0-1, columns 0-1; within it (row, column, channel)
    assert p[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    assert p[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def vilt_config() -> dict:
    return dict(embedding=dict(parts=["word_patch", "pos", "seg"], vocab_size=40, emb_size=16,
                               max_seq_length=5 + N + 1, dropout=0.0, norm="layernorm", **IMAGE),
                encoder=encoder(), targets=[dict(type="mlm", tie_weights=True), dict(type="itm")])


def test_word_patch_sequence_mask_segments_and_stable_image_positions():
    model = build_model(vilt_config())
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    attention = torch.tensor([[1, 1, 1], [1, 1, 0]])
    x = pixels()
    ctx = ForwardContext()
    out, mask = model.embedding({"input_ids": ids, "attention_mask": attention, "pixel_values": x}, ctx)
    assert out.shape == (2, 5 + 1 + N, 16)
    assert mask.tolist()[1] == [True, True, False, False, False] + [True] * (N + 1)
    assert ctx.segment_ids.tolist()[0] == [0] * 5 + [1] * (N + 1)
    longer, _ = model.embedding({"input_ids": torch.cat([ids, ids[:, :2]], 1), "pixel_values": x}, ForwardContext())
    assert torch.allclose(out[:, 5:], longer[:, 5:])  # image tokens do not move with the text length
    with pytest.raises(DataError, match="6 text tokens exceed the 5"):
        model.embedding({"input_ids": torch.ones(2, 6, dtype=torch.long), "pixel_values": x}, ForwardContext())


def test_vilt_trains_with_mlm_and_itm():
    model = build_model(vilt_config())
    assert model.targets["mlm"].head.output.weight is model.embedding.parts["word_patch"].weight
    labels = torch.full((2, 5 + 1 + N), -100)
    labels[0, 1], labels[1, 0] = 6, 8
    batch = {"input_ids": torch.tensor([[5, 4, 7], [3, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "pixel_values": pixels(), "mlm_labels": labels, "itm_labels": torch.tensor([1, 0])}
    out = model(batch)
    assert out.metrics["mlm_count"] == 2 and out.metrics["itm_count"] == 2
    assert out.logits["itm"].shape == (2, 2)
    check_trains(model, batch)


def test_image_parts_run_under_bf16_autocast():
    model = build_model(dict(embedding=embedding(["patch", "pos"]), encoder=encoder(), targets=[dict(type="cls")]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model({"pixel_values": pixels(), "labels": torch.tensor([0, 1])})
    assert torch.isfinite(out.loss)
