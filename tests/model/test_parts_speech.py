"""Speech part: the S2T conv subsampler, its mask, and a tiny S2T encoder-decoder."""

from __future__ import annotations

import pytest
import torch

from modaloom.context import ForwardContext
from modaloom.embeddings.speech import subsampled_lengths
from modaloom.errors import ConfigError, DataError
from modaloom.model import build_model


def s2t_config(**speech) -> dict:
    layer = dict(type="transformer", hidden_size=16, heads_num=2, layers_num=1, feedforward_size=24, dropout=0.0,
                 norm_position="pre", act="relu")
    emb = dict(parts=["speech", "sinusoidal"], emb_size=16, audio_feature_size=6, conv_channels=[10],
               conv_kernel_sizes=[5, 3], position_offset=2, scale_embedding=True, norm="none", dropout=0.0)
    emb.update(speech)
    return dict(embedding=emb, encoder=layer,
                tgt_embedding=dict(parts=["word", "sinusoidal"], vocab_size=30, emb_size=16, position_offset=2,
                                   pad_id=1, scale_embedding=True, norm="none", dropout=0.0),
                decoder=dict(layer, mask="causal"),
                targets=[dict(type="lm", transform=False, output_bias=False, tie_weights=True)])


def batch(frames: int = 21) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, frames, dtype=torch.long)
    mask[1, 13:] = 0
    return {"input_features": torch.randn(2, frames, 6, generator=g), "feature_mask": mask,
            "decoder_input_ids": torch.randint(2, 30, (2, 5), generator=g),
            "lm_labels": torch.randint(2, 30, (2, 5), generator=g)}


def test_matches_transformers_conv_subsampler_weight_for_weight():
    transformers = pytest.importorskip("transformers")
    from transformers.models.speech_to_text import modeling_speech_to_text as s2t

    subsampler = getattr(s2t, "Conv1dSubsampler", None) or s2t.Speech2TextConv1dSubsampler

    hf_cfg = transformers.Speech2TextConfig(d_model=16, conv_channels=10, conv_kernel_sizes=[5, 3],
                                            num_conv_layers=2, input_feat_per_channel=6, input_channels=1)
    reference = subsampler(hf_cfg).eval()
    model = build_model(s2t_config(scale_embedding=False)).eval()
    part = model.embedding.parts["speech"]
    part.convs.load_state_dict(reference.conv_layers.state_dict())
    b = batch()
    ours, mask = part(None, None, b, ForwardContext())
    assert torch.allclose(ours, reference(b["input_features"]), atol=1e-5)
    assert mask.sum(1).tolist() == [6, 4]  # 21 -> 11 -> 6 frames; 13 -> 7 -> 4


def test_mask_lengths_follow_each_convolution():
    lengths = torch.tensor([21, 13, 1, 2])
    assert subsampled_lengths(lengths, [5, 3]).tolist() == [6, 4, 1, 1]
    assert subsampled_lengths(torch.tensor([10]), [4]).tolist() == [6]  # even kernel: (10 + 4 - 4) // 2 + 1


def test_scaling_and_no_mask_without_feature_mask():
    model = build_model(s2t_config())
    part = model.embedding.parts["speech"]
    b = batch()
    scaled, mask = part(None, None, {"input_features": b["input_features"]}, ForwardContext())
    part.scale = 1.0
    plain, _ = part(None, None, {"input_features": b["input_features"]}, ForwardContext())
    assert mask is None
    assert torch.allclose(scaled, plain * 4.0)  # sqrt(16)


def test_tiny_s2t_trains():
    torch.manual_seed(0)
    model = build_model(s2t_config())
    assert "embedding.parts.speech.convs.1.weight" in model.state_dict()
    assert model.embedding.parts["speech"].convs[1].weight.shape == (32, 5, 3)  # 2 * emb_size out, 10 / 2 in
    with torch.no_grad():
        assert model(batch()).logits["lm"].shape == (10, 30)
    out = model(batch())
    assert int(out.metrics["lm_count"]) == 10 and "lm" not in out.logits  # training: chunked loss, no logits kept
    out.loss.backward()
    assert model.embedding.parts["speech"].convs[0].weight.grad.abs().sum() > 0


def test_bad_conv_layout_and_features_are_named():
    with pytest.raises(ConfigError, match="conv_channels lists the inner widths"):
        build_model(s2t_config(conv_channels=[10, 32]))
    with pytest.raises(ConfigError, match="must be even"):
        build_model(s2t_config(conv_channels=[9]))
    model = build_model(s2t_config())
    with pytest.raises(DataError, match=r"\(B, T, 6\)"):
        model({"input_features": torch.randn(2, 20, 7)})
