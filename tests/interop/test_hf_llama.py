"""LLaMA parity with transformers: RMSNorm, rotary, gated SiLU, grouped-query attention, (un)tied head."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.errors import ConfigError  # noqa: E402
from modaloom.interop.hf import hf_to_modaloom  # noqa: E402

from .hf_parity import check_family, perturb, text_inputs  # noqa: E402


def config(**kw):
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=37, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.LlamaConfig(**{**base, **kw})


def test_llama_causal_lm_gqa_untied(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.LlamaForCausalLM(config()))
    model = hf_to_modaloom(hf)
    assert model.config.encoder.kv_heads_num == 2 and model.config.encoder.rotary_base == 500.0
    hf_in, batch, real = text_inputs(99, 0, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "lm"})


def test_llama_tied_with_biases_and_wide_heads(tmp_path):
    torch.manual_seed(1)
    hf = perturb(transformers.LlamaForCausalLM(config(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                                      head_dim=16, num_key_value_heads=1)))
    hf_in, batch, real = text_inputs(99, 0, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "lm"})


def test_llama_rope_scaling_refused():
    cfg = config(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(ConfigError, match="linear"):
        hf_to_modaloom(transformers.LlamaModel(cfg))
