"""RoBERTa and XLM-R parity with transformers: position offset 2, type_vocab_size 1, MLM and classifier heads."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.interop.hf import convert_from_hf, hf_to_modaloom, modaloom_to_hf  # noqa: E402

from .hf_parity import check_family, perturb, text_inputs  # noqa: E402


def config(cls, **kw):
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=40, type_vocab_size=1, pad_token_id=1)
    return cls(**{**base, **kw})


def test_roberta_masked_lm_parity(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.RobertaForMaskedLM(config(transformers.RobertaConfig, hidden_act="gelu_new")))
    model = hf_to_modaloom(hf)
    assert model.config.embedding.position_offset == 2
    assert model.config.embedding.max_seq_length == 38
    hf_in, batch, real = text_inputs(99, 1, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "mlm"})


def test_xlm_roberta_masked_lm_parity(tmp_path):
    torch.manual_seed(1)
    hf = perturb(transformers.XLMRobertaForMaskedLM(config(transformers.XLMRobertaConfig)))
    hf_in, batch, real = text_inputs(99, 1, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "mlm"})
    assert modaloom_to_hf(hf_to_modaloom(hf), tmp_path / "x", model_type="xlm-roberta").architecture == (
        "XLMRobertaForMaskedLM")


def test_roberta_sequence_classification(tmp_path):
    torch.manual_seed(2)
    hf = perturb(transformers.RobertaForSequenceClassification(config(transformers.RobertaConfig, num_labels=4)))
    hf_in, batch, real = text_inputs(99, 1, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "cls"})


def test_headless_roberta_drops_pooler(tmp_path):
    torch.manual_seed(3)
    hf = perturb(transformers.RobertaModel(config(transformers.RobertaConfig)))
    conv = convert_from_hf(hf)
    assert "targets.mlm.head.dense.weight" in conv.random_init
    hf_in, batch, real = text_inputs(99, 1, segments=False)
    with torch.no_grad():
        expected = hf(**hf_in).last_hidden_state
        got = conv.model(batch).hidden
    assert (expected - got)[real].abs().max() < 1e-4
    modaloom_to_hf(conv.model, tmp_path / "base", architecture="RobertaModel")
    base = transformers.RobertaModel.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        assert torch.equal(base(**hf_in).last_hidden_state, expected)
