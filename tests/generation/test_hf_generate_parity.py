"""Greedy, beam search and seeded sampling equal transformers' generate token for token (GPT-2, T5, BART)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modaloom.generation import GenerationConfig, generate, pad_prompts  # noqa: E402

from . import hf_models  # noqa: E402
from .hf_models import convert, prompts, trim  # noqa: E402

# family -> (builder, pad id, decoder start id or None for decoder-only)
FAMILIES = {"gpt2": (hf_models.gpt2, 0, None), "t5": (hf_models.t5, 0, 0), "bart": (hf_models.bart, 1, 2)}


def frequent_token(model, rows, pad, start) -> int:
    """A token greedy decoding emits early, used as eos so that rows end at different steps."""
    out = generate(model, rows, GenerationConfig(max_new_tokens=6, pad_token_id=pad, decoder_start_token_id=start))
    return out.token_lists()[1][2]


def hf_generate(hf, rows, pad, start, **options) -> list[list[int]]:
    seq2seq = start is not None
    ids, mask = pad_prompts(rows, pad, left=not seq2seq)
    cfg = transformers.GenerationConfig(pad_token_id=pad, decoder_start_token_id=start, **options)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    new = out[:, 1:] if seq2seq else out[:, ids.shape[1]:]
    return [trim(row, options["eos_token_id"]) for row in new.tolist()]


def ours(model, rows, pad, start, **options) -> list[list[int]]:
    cfg = GenerationConfig(pad_token_id=pad, decoder_start_token_id=start, **options)
    return generate(model, rows, cfg).token_lists()


CASES = {
    "greedy": dict(num_beams=1),
    "beam4": dict(num_beams=4),
    "beam4-early": dict(num_beams=4, early_stopping=True, length_penalty=0.6),
    "beam4-never": dict(num_beams=4, early_stopping="never", length_penalty=1.5),
    "greedy-penalty-min": dict(num_beams=1, repetition_penalty=1.3, min_new_tokens=4),
    "beam4-penalty": dict(num_beams=4, repetition_penalty=1.3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_equals_transformers(family, case):
    build, pad, start = FAMILIES[family]
    hf = build()
    model = convert(hf)
    rows = prompts((5, 9, 3, 7))
    eos = frequent_token(model, rows, pad, start)
    options = dict(CASES[case], max_new_tokens=10, eos_token_id=eos, do_sample=False)
    expected = hf_generate(hf, rows, pad, start, **options)
    got = ours(model, rows, pad, start, **options)
    assert got == expected
    if case in ("greedy", "beam4"):  # rows end at eos at different steps, others run to the limit
        assert any(row[-1] == eos for row in got) and any(len(row) < 10 for row in got)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_seeded_sampling_equals_transformers(family):
    """Same processed distribution and the same multinomial draws from the same seed give the same tokens."""
    build, pad, start = FAMILIES[family]
    hf = build()
    model = convert(hf)
    rows = prompts((4, 6))
    for options in (dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8, temperature=1.3)):
        options = dict(options, max_new_tokens=8, eos_token_id=hf_models.VOCAB - 1, do_sample=True)
        torch.manual_seed(123)
        expected = hf_generate(hf, rows, pad, start, **options)
        got = ours(model, rows, pad, start, seed=123, **options)
        assert got == expected, options
