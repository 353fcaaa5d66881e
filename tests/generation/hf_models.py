"""Tiny random transformers models (GPT-2, T5, BART) converted to modaloom, and prompts, for the tests."""

from __future__ import annotations

import torch

from modaloom.interop.hf import hf_to_modaloom

VOCAB = 97


def gpt2(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return _sharpen(transformers.GPT2LMHeadModel(config).eval())


def t5(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                   num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20, decoder_start_token_id=0)
    return _sharpen(transformers.T5ForConditionalGeneration(config).eval())


def bart(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                     encoder_ffn_dim=48, decoder_ffn_dim=48, encoder_attention_heads=4,
                                     decoder_attention_heads=4, max_position_embeddings=64, init_std=0.3)
    model = transformers.BartForConditionalGeneration(config).eval()  # wide init: outputs that vary
    for name in ("forced_bos_token_id", "forced_eos_token_id", "no_repeat_ngram_size"):
        setattr(model.generation_config, name, None)  # BART's defaults; modaloom has no such options
    return model


def _sharpen(model):
    """Random weights of a larger scale, so that next-token distributions are peaked and eos gets picked."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    return model


def convert(hf_model):
    return hf_to_modaloom(hf_model).eval()


def prompts(lengths=(5, 9, 3), seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB - 1, (n,), generator=gen).tolist() for n in lengths]


def trim(row: list[int], eos: int) -> list[int]:
    """A row up to and including its first eos."""
    return row[:row.index(eos) + 1] if eos in row else row
