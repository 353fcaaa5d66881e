"""BART parity: a random tiny transformers model, converted, gives the same outputs; exports round-trip."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.interop.hf import convert_from_hf, hf_to_modaloom, modaloom_to_hf  # noqa: E402
from tests.interop.hf_parity import assert_same_state, perturb, seq2seq_diffs  # noqa: E402

TOL = 1e-4


def bart_config(**kwargs):
    return transformers.BartConfig(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=3,
                                   encoder_ffn_dim=40, decoder_ffn_dim=44, encoder_attention_heads=4,
                                   decoder_attention_heads=2, max_position_embeddings=24, **kwargs)


def inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask, torch.randint(3, 97, (2, 7), generator=gen)


def compare(hf, model) -> dict[str, float]:
    return seq2seq_diffs(hf, model, *inputs())


@pytest.mark.parametrize("scale_embedding", [False, True])
def test_bart_parity_and_round_trip(tmp_path, scale_embedding):
    torch.manual_seed(0)
    hf = transformers.BartForConditionalGeneration(bart_config(scale_embedding=scale_embedding)).eval()
    perturb(hf)
    model = hf_to_modaloom(hf)
    diffs = compare(hf, model)
    assert max(diffs.values()) < TOL, diffs

    modaloom_to_hf(model, tmp_path / "hf")
    reloaded = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert_same_state(reloaded.state_dict(), hf.state_dict())
    assert max(compare(reloaded, model).values()) < TOL
    assert_same_state(hf_to_modaloom(tmp_path / "hf").state_dict(), model.state_dict())


def test_bart_base_model_round_trip(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BartModel(bart_config()).eval()
    perturb(hf)
    conversion = convert_from_hf(hf)
    assert conversion.random_init == ["targets.lm.head.output.bias"]
    ids, mask, dec = inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        out = conversion.model({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec})
    assert (out.hidden - ref.last_hidden_state).abs().max() < TOL
    modaloom_to_hf(conversion.model, tmp_path / "hf", architecture="BartModel")
    reloaded = transformers.BartModel.from_pretrained(tmp_path / "hf")
    assert_same_state(reloaded.state_dict(), hf.state_dict())
