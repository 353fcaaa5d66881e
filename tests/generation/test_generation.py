"""The generation engine on its own: padding invariance, options, stop strings, processors, errors."""

from __future__ import annotations

import pytest
import torch

from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.generation import (
    GenerationConfig,
    apply_repetition_penalty,
    generate,
    top_k_filter,
    top_p_filter,
)
from modaloom.model import build_model


def tiny_lm(parts=("word", "pos"), position="none", seed=0):
    torch.manual_seed(seed)
    model = build_model({
        "embedding": {"parts": list(parts), "vocab_size": 40, "emb_size": 16, "max_seq_length": 64,
                      "dropout": 0.0},
        "encoder": {"hidden_size": 16, "layers_num": 2, "heads_num": 2, "feedforward_size": 32, "mask": "causal",
                    "norm_position": "pre", "position": position, "dropout": 0.0},
        "targets": [{"type": "lm", "transform": False}],
    })
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # peaked distributions: varied greedy output
    return model.eval()


ROWS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


@pytest.mark.parametrize("parts,position", [(("word", "pos"), "none"), (("word", "sinusoidal"), "none"),
                                            (("word",), "rotary")])
def test_left_padded_rows_give_the_tokens_of_each_row_alone(parts, position):
    model = tiny_lm(parts, position)
    for beams in (1, 3):
        cfg = GenerationConfig(max_new_tokens=8, num_beams=beams, pad_token_id=0)
        together = generate(model, ROWS, cfg).token_lists()
        alone = [generate(model, [row], cfg).token_lists()[0] for row in ROWS]
        assert together == alone
        assert len({tuple(r) for r in together}) > 1


def test_cached_greedy_equals_full_recomputation():
    model = tiny_lm()
    out = generate(model, [ROWS[0]], GenerationConfig(max_new_tokens=6)).token_lists()[0]
    seq = list(ROWS[0])
    for _ in range(6):
        logits = model({"input_ids": torch.tensor([seq])}).logits["lm"]
        seq.append(int(logits[0, -1].argmax()))
    assert out == seq[len(ROWS[0]):]


def test_position_ids_field_moves_learned_positions():
    model = tiny_lm()
    ids = torch.tensor([[3, 4, 5]])
    plain, _ = model.embedding({"input_ids": ids}, ForwardContext())
    shifted, _ = model.embedding({"input_ids": ids}, ForwardContext(position_ids=torch.tensor([[2, 3, 4]])))
    cached, _ = model.embedding({"input_ids": ids}, ForwardContext(past_length=2))
    assert torch.allclose(shifted, cached) and not torch.allclose(shifted, plain)
    with pytest.raises(ConfigError, match="max_seq_length 64"):
        model.embedding({"input_ids": ids}, ForwardContext(position_ids=torch.tensor([[62, 63, 64]])))


def test_eos_min_and_max_new_tokens():
    model = tiny_lm()
    free = generate(model, ROWS, GenerationConfig(max_new_tokens=8)).token_lists()
    eos = free[0][1]
    out = generate(model, ROWS, GenerationConfig(max_new_tokens=8, eos_token_id=eos, pad_token_id=0))
    assert out.token_lists()[0] == free[0][:2]
    assert out.tokens.shape[1] <= 8 and (out.tokens[0, 2:] == 0).all()
    late = generate(model, ROWS, GenerationConfig(max_new_tokens=8, min_new_tokens=5, eos_token_id=eos))
    assert all(eos not in row[:5] for row in late.token_lists())


def test_stop_strings_end_a_row_on_decoded_text():
    model = tiny_lm()
    free = generate(model, ROWS, GenerationConfig(max_new_tokens=8)).token_lists()
    stop = f"<{free[0][2]}>"

    def decode(ids):
        return "".join(f"<{i}>" for i in ids)

    out = generate(model, ROWS, GenerationConfig(max_new_tokens=8, stop_strings=[stop]), decode=decode)
    assert out.token_lists()[0] == free[0][:3]
    with pytest.raises(ConfigError, match="decode function"):
        generate(model, ROWS, GenerationConfig(stop_strings=["x"]))


def test_seeded_sampling_is_reproducible_and_low_temperature_is_greedy():
    model = tiny_lm()
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, seed=7, top_k=10, top_p=0.95)
    assert generate(model, ROWS, cfg).token_lists() == generate(model, ROWS, cfg).token_lists()
    other = generate(model, ROWS, GenerationConfig(max_new_tokens=10, do_sample=True, seed=8)).token_lists()
    assert other != generate(model, ROWS, GenerationConfig(max_new_tokens=10, do_sample=True, seed=9)).token_lists()
    greedy = generate(model, ROWS, GenerationConfig(max_new_tokens=10)).token_lists()
    cold = GenerationConfig(max_new_tokens=10, do_sample=True, seed=1, temperature=1e-4)
    assert generate(model, ROWS, cold).token_lists() == greedy


def test_top_k_never_leaves_the_k_best_and_top_p_keeps_its_mass():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=gen)
    kept = top_k_filter(scores, 5)
    best = scores.topk(5).indices
    assert (torch.isfinite(kept).sum(-1) == 5).all()
    assert torch.isfinite(kept.gather(1, best)).all()
    kept = top_p_filter(scores, 0.7)
    probs = scores.softmax(-1)
    for row in range(4):
        keep = torch.isfinite(kept[row])
        assert probs[row][keep].sum() >= 0.7 - 1e-6  # enough mass ...
        smallest = probs[row][keep].min()  # ... and dropping the least likely kept token falls short
        assert probs[row][keep].sum() - smallest < 0.7 + 1e-6
        assert probs[row][~keep].max() <= smallest


def test_processors_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 30, generator=gen)
    ids = torch.randint(0, 30, (3, 7), generator=gen)
    seen = torch.zeros(3, 30, dtype=torch.bool).scatter_(1, ids, True)
    ref = lp.RepetitionPenaltyLogitsProcessor(1.4)(ids, scores.clone())
    assert torch.equal(apply_repetition_penalty(scores, seen, 1.4), ref)
    assert torch.equal(top_k_filter(scores, 4), lp.TopKLogitsWarper(4)(ids, scores))
    assert torch.equal(top_p_filter(scores, 0.6), lp.TopPLogitsWarper(0.6)(ids, scores))
    del transformers


def test_actionable_errors():
    classifier = build_model({
        "embedding": {"parts": ["word"], "vocab_size": 20, "emb_size": 8},
        "encoder": {"hidden_size": 8, "layers_num": 1, "heads_num": 2, "feedforward_size": 16},
        "targets": [{"type": "cls", "labels_num": 2}],
    })
    with pytest.raises(ConfigError, match=r"needs an 'lm' target.*cls \(cls\)"):
        generate(classifier, [[1, 2]])
    bidirectional = build_model({
        "embedding": {"parts": ["word"], "vocab_size": 20, "emb_size": 8},
        "encoder": {"hidden_size": 8, "layers_num": 1, "heads_num": 2, "feedforward_size": 16},
        "targets": [{"type": "lm"}],
    })
    with pytest.raises(ConfigError, match="mask: causal"):
        generate(bidirectional, [[1, 2]])
    model = tiny_lm()
    with pytest.raises(ConfigError, match="left-padded"):
        generate(model, torch.tensor([[1, 2, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ConfigError, match="empty prompt"):
        generate(model, [[1], []])
    for bad, match in [(dict(num_beams=2, do_sample=True), "beam sampling"), (dict(top_p=0), "top_p"),
                       (dict(temperature=0), "temperature"), (dict(max_new_tokens=0), "max_new_tokens"),
                       (dict(early_stopping="sometimes"), "early_stopping"),
                       (dict(num_beams=2, stop_strings=["x"]), "stop_strings")]:
        with pytest.raises(ConfigError, match=match):
            generate(model, [[1]], GenerationConfig(**bad))
