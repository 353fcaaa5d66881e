"""ALBERT parity with transformers: factorized embeddings, one shared layer, MLM + SOP heads."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.errors import ConfigError  # noqa: E402
from modaloom.interop.hf import hf_to_modaloom  # noqa: E402

from .hf_parity import check_family, perturb, text_inputs  # noqa: E402


def config(**kw):
    base = dict(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, pad_token_id=0)
    return transformers.AlbertConfig(**{**base, **kw})


def test_albert_for_pretraining_parity(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.AlbertForPreTraining(config()))
    model = hf_to_modaloom(hf)
    assert model.config.encoder.share_layers and len(model.encoder.stack.layers) == 1
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real, {"prediction_logits": "mlm", "sop_logits": "sop"})


def test_albert_masked_lm_parity(tmp_path):
    torch.manual_seed(1)
    hf = perturb(transformers.AlbertForMaskedLM(config(hidden_act="gelu")))
    hf_in, batch, real = text_inputs(99, 0)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "mlm"})


def test_albert_layouts_we_cannot_reproduce_are_refused():
    with pytest.raises(ConfigError, match="num_hidden_groups"):
        hf_to_modaloom(transformers.AlbertModel(config(num_hidden_groups=2)))
    with pytest.raises(ConfigError, match="embedding_size"):
        hf_to_modaloom(transformers.AlbertModel(config(embedding_size=32)))
