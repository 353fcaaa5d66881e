"""GPT-2 parity with transformers: Conv1D transposes, fused qkv split, pre-norm + ln_f, tied LM head."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.interop.hf import convert_from_hf, hf_to_modaloom  # noqa: E402

from .hf_parity import check_family, perturb, text_inputs  # noqa: E402


def config(**kw):
    base = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=48, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Config(**{**base, **kw})


def test_gpt2_lm_head_parity(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.GPT2LMHeadModel(config()))
    model = hf_to_modaloom(hf)
    assert model.targets["lm"].head.output.weight is model.embedding.parts["word"].weight
    hf_in, batch, real = text_inputs(99, 0, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "lm"})


def test_gpt2_untied_with_inner_size(tmp_path):
    torch.manual_seed(1)
    hf = perturb(transformers.GPT2LMHeadModel(config(tie_word_embeddings=False, n_inner=40)))
    hf_in, batch, real = text_inputs(99, 0, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {"logits": "lm"})


def test_gpt2_base_model_and_old_buffers(tmp_path):
    torch.manual_seed(2)
    hf = perturb(transformers.GPT2Model(config()))
    state = {f"h.{i}.attn.bias": torch.ones(1, 1, 48, 48) for i in range(2)}  # stored by old checkpoints
    hf_in, batch, real = text_inputs(99, 0, segments=False)
    check_family(hf, tmp_path, hf_in, batch, real, {})
    from safetensors.torch import load_file, save_file

    stored = load_file(tmp_path / "hf" / "model.safetensors")
    save_file({**stored, **state}, tmp_path / "hf" / "model.safetensors")
    assert not convert_from_hf(tmp_path / "hf").random_init
