"""The ``modality_experts`` encoder (VLMo): expert routing, the dual and fusion views, shared attention, a forward
checked by hand, and targets reading the view they declare."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.model import build_model

H, T = 8, 4  # width, text tokens; images: 8x8 in 4-pixel patches + class token = 5 tokens


def config(layers: int = 2, fusion: int = 1, targets: list | None = None, **encoder) -> dict:
    return dict(
        embedding=dict(parts=["dual"], emb_size=H, norm="none", dropout=0.0, streams=[
            dict(parts=["word", "pos"], vocab_size=20, emb_size=H, max_seq_length=T, norm="none", dropout=0.0),
            dict(parts=["patch", "pos"], emb_size=H, max_seq_length=5, image_height=8, image_width=8, patch_size=4,
                 cls_token=True, norm="none", dropout=0.0)]),
        encoder=dict(type="modality_experts", hidden_size=H, layers_num=layers, fusion_layers=fusion, heads_num=2,
                     feedforward_size=16, norm_position="pre", dropout=0.0, **encoder),
        targets=targets or [dict(type="clr", feature_size=4), dict(type="itm")])


def batch(rows: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 20, (rows, T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0  # one padded text token
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(rows, 3, 8, 8, generator=g),
            "itm_labels": torch.ones(rows, dtype=torch.long)}


def encode(model, data, mode):
    with torch.no_grad():
        return model.encode(data, mode=mode)


def bump(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5)


def test_a_token_reads_only_its_own_expert():
    torch.manual_seed(0)
    model, data = build_model(config()), batch()
    (text, image), _ = encode(model, data, "dual")
    bump(model.encoder.layers[0].experts["vision"])  # the vision expert: text in the dual view is untouched
    (text2, image2), _ = encode(model, data, "dual")
    assert torch.equal(text, text2) and not torch.allclose(image, image2)
    bump(model.encoder.layers[1].experts["text"])
    (text3, image3), _ = encode(model, data, "dual")
    assert not torch.allclose(text2, text3) and torch.equal(image2, image3)
    # fusion, one layer without vl: a text token's output depends on the text expert only (image tokens on vision)
    one = build_model(config(layers=1, fusion=0))
    fused, _ = encode(one, data, "fusion")
    bump(one.encoder.layers[0].experts["vision"])
    fused2, _ = encode(one, data, "fusion")
    assert torch.equal(fused[:, :T], fused2[:, :T]) and not torch.allclose(fused[:, T:], fused2[:, T:])
    assert "vl" not in one.encoder.layers[0].experts and "vl" in model.encoder.layers[1].experts
    assert "vl" not in model.encoder.layers[0].experts


def test_dual_and_fusion_shapes_and_masks():
    model, data = build_model(config()), batch()
    (text, image), (text_mask, image_mask) = encode(model, data, "dual")
    assert text.shape == (3, T, H) and image.shape == (3, 5, H) and image_mask is None
    fused, fused_mask = encode(model, data, "fusion")
    assert fused.shape == (3, T + 5, H) and fused_mask.shape == (3, T + 5)
    assert fused_mask[0].tolist() == [True] * (T - 1) + [False] + [True] * 5
    assert torch.equal(encode(model, data, None)[0], fused)  # default_mode: fusion
    with pytest.raises(ConfigError, match="modes"):
        model.encode(data, mode="text")


def test_one_attention_tensor_serves_both_modalities():
    model, data = build_model(config()), batch()
    names = [n for n, _ in model.named_parameters() if n.endswith("self_attn.query.weight")]
    assert names == ["encoder.layers.0.self_attn.query.weight", "encoder.layers.1.self_attn.query.weight"]
    query = model.encoder.layers[0].self_attn.query.weight
    for stream in range(2):  # a loss on either stream alone reaches the same tensor
        model.zero_grad()
        hidden, _ = model.encode(data, mode="dual")
        hidden[stream].sum().backward()
        assert query.grad is not None and query.grad.abs().sum() > 0


def reference_layer(layer, x, bias, layout):
    """One pre-norm layer written out: attention over the whole sequence, then each run's expert."""
    attn = layer.self_attn
    h = F.layer_norm(x, (H,), layer.self_attn_norm.weight, layer.self_attn_norm.bias, layer.self_attn_norm.eps)
    b, n, _ = h.shape

    def heads(t):
        return t.view(b, n, 2, H // 2).transpose(1, 2)

    q, k, v = heads(attn.query(h)), heads(attn.key(h)), heads(attn.value(h))
    scores = q @ k.transpose(-1, -2) / (H // 2) ** 0.5 + bias
    x = x + attn.output((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, H))
    out, start = [], 0
    for name, length in layout:
        expert, run = layer.experts[name], x[:, start:start + length]
        normed = F.layer_norm(run, (H,), expert.norm.weight, expert.norm.bias, expert.norm.eps)
        ff = expert.feed_forward
        out.append(run + ff.linear_out(F.gelu(ff.linear_in(normed))))
        start += length
    return torch.cat(out, dim=1)


def test_fusion_forward_matches_a_hand_written_one():
    torch.manual_seed(1)
    model, data = build_model(config()), batch()
    with torch.no_grad():
        (x_text, x_image), (text_mask, _) = model.embedding(data, ForwardContext())
        x = torch.cat([x_text, x_image], dim=1)
        real = torch.cat([text_mask.bool(), torch.ones(3, 5, dtype=torch.bool)], dim=1)
        bias = torch.zeros(3, 1, 1, T + 5).masked_fill(~real[:, None, None, :], torch.finfo(torch.float32).min)
        x = reference_layer(model.encoder.layers[0], x, bias, [("text", T), ("vision", 5)])
        x = reference_layer(model.encoder.layers[1], x, bias, [("vl", T + 5)])
        norm = model.encoder.final_norm
        expected = F.layer_norm(x, (H,), norm.weight, norm.bias, norm.eps)
        got, _ = model.encode(data, mode="fusion")
    assert torch.allclose(got, expected, atol=1e-5)


def test_each_target_reads_its_view_once_per_forward():
    model, data = build_model(config()), batch()
    calls, seen = [], {}
    original = model.encoder.forward

    def recording(x, mask, b, ctx):
        calls.append(ctx.encoder_mode)
        return original(x, mask, b, ctx)

    model.encoder.forward = recording
    for label in ("clr", "itm"):
        target = model.targets[label]
        target.register_forward_pre_hook(lambda mod, args, label=label: seen.__setitem__(label, args[0]))
    out = model(data)
    assert calls == ["dual", "fusion"]  # hidden is the first target's view: no view computed twice
    assert isinstance(seen["clr"], tuple) and seen["itm"].shape == (3, T + 5, H)
    assert isinstance(out.hidden, tuple) and {"clr_loss", "itm_loss"} <= set(out.metrics)
    calls.clear()
    model(data, ForwardContext(encoder_mode="fusion"))  # the caller's view for ``hidden``
    assert calls == ["fusion", "dual"]


def test_hard_negatives_are_re_encoded_in_the_fusion_view():
    torch.manual_seed(0)
    model = build_model(config(targets=[dict(type="clr", feature_size=4), dict(type="itm", negatives="hard")]))
    out = model(batch(4))
    assert out.metrics["itm_hard_negatives"] == 8 and torch.isfinite(out.loss)


@pytest.mark.parametrize("change, message", [
    (dict(fusion=3), "fusion_layers"), (dict(mask="causal"), "fully_visible"),
    (dict(modalities=["text", "vl"]), "modalities"), (dict(position="rotary"), "position"),
])
def test_option_checks(change, message):
    fusion = change.pop("fusion", 1)
    with pytest.raises(ConfigError, match=message):
        build_model(config(fusion=fusion, **change))


def test_streams_must_be_as_wide_as_the_encoder():
    spec = config()
    spec["embedding"]["streams"][1]["emb_size"] = 6
    with pytest.raises(ConfigError, match="as wide as hidden_size"):
        build_model(spec)
