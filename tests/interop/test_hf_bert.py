"""BERT parity with transformers: outputs within 1e-4, exact state-dict round trip, folder export."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.errors import CheckpointError, ConfigError  # noqa: E402
from modaloom.interop.hf import convert_from_hf, hf_to_modaloom, modaloom_to_hf  # noqa: E402

from .hf_parity import check_family, perturb, text_inputs  # noqa: E402


def config(**kw):
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
    return transformers.BertConfig(**{**base, **kw})


def test_bert_for_pretraining_parity(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.BertForPreTraining(config()))
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real,
                 {"prediction_logits": "mlm", "seq_relationship_logits": "sp"})


def test_bert_masked_lm_untied_gelu_new(tmp_path):
    torch.manual_seed(1)
    hf = perturb(transformers.BertForMaskedLM(config(tie_word_embeddings=False, hidden_act="gelu_new")))
    with torch.no_grad():  # untied, HF reads decoder.bias only; the unused cls.predictions.bias mirrors it
        hf.cls.predictions.bias.copy_(hf.cls.predictions.decoder.bias)
    model = hf_to_modaloom(hf)
    assert model.config.targets[0].tie_weights is False
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "mlm"})


def test_bert_sequence_classification(tmp_path):
    torch.manual_seed(2)
    hf = perturb(transformers.BertForSequenceClassification(config(num_labels=3)))
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "cls"})


def test_bert_token_classification(tmp_path):
    torch.manual_seed(4)
    hf = perturb(transformers.BertForTokenClassification(config(num_labels=5)))
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "tagger"})
    assert [t.type for t in hf_to_modaloom(hf).config.targets] == ["tagger"]


def test_headless_bert_keeps_pooler_and_reports_random_heads(tmp_path):
    torch.manual_seed(3)
    hf = perturb(transformers.BertModel(config()))
    conv = convert_from_hf(hf)
    assert [t.type for t in conv.model.config.targets] == ["mlm", "sp"]
    assert "targets.mlm.head.dense.weight" in conv.random_init
    assert "targets.sp.output.weight" in conv.random_init
    assert not any("pooler" in k for k in conv.random_init)
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real, {})
    # The default export of mlm + sp is BertForPreTraining; heads come along.
    export = modaloom_to_hf(conv.model, tmp_path / "pre")
    assert export.architecture == "BertForPreTraining" and not export.dropped


def test_export_to_base_reports_dropped_heads(tmp_path):
    hf = transformers.BertForPreTraining(config()).eval()
    model = hf_to_modaloom(hf)
    export = modaloom_to_hf(model, tmp_path / "base", architecture="BertModel")
    assert "targets.mlm.head.dense.weight" in export.dropped
    base = transformers.BertModel.from_pretrained(tmp_path / "base")
    assert torch.equal(base.pooler.dense.weight, hf.bert.pooler.dense.weight)


def test_bad_checkpoints_name_the_keys(tmp_path):
    hf = transformers.BertForMaskedLM(config()).eval()
    modaloom_to_hf(hf_to_modaloom(hf), tmp_path / "ok", architecture="BertForMaskedLM")
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "ok" / "model.safetensors")
    broken = dict(state)
    broken["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(36, 32)
    save_file(broken, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(CheckpointError, match="intermediate.dense.weight"):
        hf_to_modaloom(tmp_path / "ok")
    extra = dict(state, **{"bert.encoder.layer.0.surprise": torch.zeros(2)})
    save_file(extra, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(CheckpointError, match="surprise"):
        hf_to_modaloom(tmp_path / "ok")
    missing = {k: v for k, v in state.items() if "layer.1.output.dense" not in k}
    save_file(missing, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layer\.1\.output\.dense"):
        hf_to_modaloom(tmp_path / "ok")


def test_unsupported_options_and_architectures():
    with pytest.raises(ConfigError, match="position_embedding_type"):
        hf_to_modaloom(transformers.BertModel(config(position_embedding_type="relative_key")))
    with pytest.raises(ConfigError, match="BertForNextSentencePrediction"):
        hf_to_modaloom(transformers.BertForNextSentencePrediction(config()))
    model = hf_to_modaloom(transformers.BertForMaskedLM(config()))
    model.config.encoder.norm_position = "pre"
    with pytest.raises(ConfigError, match="model.encoder.norm_position is 'pre' but bert only has 'post'"):
        modaloom_to_hf(model, "/nonexistent/never-written", model_type="bert")
