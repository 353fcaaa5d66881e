"""Shared checks for the HF parity tests of encoder-only and decoder-only text families."""

from __future__ import annotations

from pathlib import Path

import torch

from modaloom.interop.hf import convert_from_hf, modaloom_to_hf

TOL = 1e-4


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norms and biases too (HF initialises them to 1 and 0), so a swapped tensor cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def assert_same_state(reloaded: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
    """Same keys and bit-identical tensors."""
    assert sorted(reloaded) == sorted(original)
    for key, value in original.items():
        assert torch.equal(reloaded[key], value), key


def seq2seq_diffs(hf, model, ids: torch.Tensor, mask: torch.Tensor, dec: torch.Tensor) -> dict[str, float]:
    """Max abs differences of encoder states (real positions), decoder states and LM logits."""
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_hidden_states=True)
        out = model({"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec})
        enc, _ = model.encode({"input_ids": ids, "attention_mask": mask})
    return {
        "encoder": (enc - ref.encoder_last_hidden_state)[mask.bool()].abs().max().item(),
        "decoder": (out.hidden - ref.decoder_hidden_states[-1]).abs().max().item(),
        "logits": (out.logits["lm"] - ref.logits).abs().max().item(),
    }


def text_inputs(vocab: int, pad_id: int, segments: bool = True, seed: int = 0):
    """Two rows of length 9, the second right-padded from position 6; ids avoid the pad id."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 9), generator=gen)
    ids[ids == pad_id] = 3 if pad_id != 3 else 4
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = pad_id
    hf = {"input_ids": ids, "attention_mask": mask}
    ours = {"input_ids": ids, "attention_mask": mask}
    if segments:
        seg = torch.zeros_like(ids)
        seg[:, 4:] = 1
        hf["token_type_ids"] = seg
        ours["segment_ids"] = seg
    return hf, ours, mask.bool()


def max_diff(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor | None = None) -> float:
    d = (a.float() - b.float()).abs()
    return float((d[real] if real is not None else d).max())


def check_family(hf_model, tmp_path: Path, hf_inputs, batch, real, logits: dict[str, str]) -> dict[str, float]:
    """Convert, compare outputs, export, reload with transformers, compare state dicts and outputs exactly.

    ``logits`` maps an HF output attribute to our target label (sequence logits compared on real rows,
    pooled logits on every row). Returns the measured max abs differences.
    """
    conv = convert_from_hf(hf_model)
    model = conv.model
    with torch.no_grad():
        expected = hf_model(**hf_inputs, output_hidden_states=True)
        got = model(batch)
    hidden = expected.hidden_states[-1] if expected.hidden_states is not None else expected.last_hidden_state
    diffs = {"hidden": max_diff(hidden, got.hidden, real)}
    for attr, label in logits.items():
        value = getattr(expected, attr)
        diffs[label] = max_diff(value, got.logits[label], real if value.dim() == 3 else None)
    for name, d in diffs.items():
        assert d < TOL, f"{name} differs by {d}"

    architecture = type(hf_model).__name__
    export = modaloom_to_hf(model, tmp_path / "hf", architecture=architecture)
    assert export.architecture == architecture
    reloaded = type(hf_model).from_pretrained(tmp_path / "hf").eval()
    original = hf_model.state_dict()
    state = reloaded.state_dict()
    assert sorted(state) == sorted(original)
    for key, value in original.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        again = reloaded(**hf_inputs, output_hidden_states=True)
    again_hidden = again.hidden_states[-1] if again.hidden_states is not None else again.last_hidden_state
    assert torch.equal(again_hidden, hidden)

    # The exported folder converts back to the same modaloom weights.
    again_conv = convert_from_hf(tmp_path / "hf")
    assert again_conv.random_init == conv.random_init
    ours = model.state_dict()
    for key, value in again_conv.model.state_dict().items():
        if key not in conv.random_init:  # heads a headless checkpoint lacks are random on each import
            assert torch.equal(value, ours[key]), key
    return diffs
