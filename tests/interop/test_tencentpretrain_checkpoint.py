"""A TencentPretrain checkpoint converted to modaloom reproduces what TencentPretrain itself computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modaloom.errors import CheckpointError
from modaloom.interop.tencentpretrain import (
    SEGMENT_ROWS,
    convert_tencentpretrain,
    map_state,
    modaloom_to_tencentpretrain,
    read_tencentpretrain_state,
    tencentpretrain_batch,
    tencentpretrain_model_config,
)
from modaloom.model import Model
from modaloom.weights import load_weights_checked

CHECKPOINTS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tencentpretrain" / "checkpoints"
BIN = CHECKPOINTS / "bert_tiny_book_review_1k.bin"
CONFIG = CHECKPOINTS / "bert_tiny_config.json"
REFERENCE = CHECKPOINTS / "bert_tiny_book_review_1k_reference.npz"
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(not (BIN.is_file() and REFERENCE.is_file()),
                                reason="TencentPretrain checkpoint not available under ../shared")


@pytest.fixture(scope="module")
def converted():
    return convert_tencentpretrain(BIN, CONFIG)


@pytest.fixture(scope="module")
def outputs(converted):
    ref = np.load(REFERENCE)
    batch = tencentpretrain_batch(torch.from_numpy(ref["input_ids"]), torch.from_numpy(ref["segment_ids"]))
    with torch.no_grad():
        out = converted(batch)
    return ref, out


def test_hidden_states_match_tencentpretrain(outputs):
    ref, out = outputs
    diff = np.abs(out.hidden.numpy() - ref["hidden"]).max()
    print(f"max abs diff, encoder hidden states (4x64x128): {diff:.2e}")
    assert diff < TOLERANCE


def test_mlm_logits_match_tencentpretrain(outputs):
    ref, out = outputs
    logits = out.logits["mlm"][:, :8].numpy()
    assert logits.shape == ref["mlm_logits_first8"].shape
    diff = np.abs(logits - ref["mlm_logits_first8"]).max()
    print(f"max abs diff, MLM logits (4x8x21128): {diff:.2e}")
    assert diff < TOLERANCE


def test_every_key_is_mapped_and_shapes_agree(converted):
    state = read_tencentpretrain_state(BIN)
    mapped = map_state(state, converted.config)
    assert len(mapped) == len(state) == 47
    own = converted.state_dict()
    for name, tensor in mapped.items():
        assert own[name].shape == tensor.shape, name
    # The tied MLM output is the word embedding itself, as in TencentPretrain.
    assert converted.targets["mlm"].head.output.weight is converted.embedding.word_embedding().weight


def test_segment_rows_reordered(converted):
    state = read_tencentpretrain_state(BIN)
    seg = converted.embedding.parts["seg"].weight.detach()
    for ours, theirs in enumerate(SEGMENT_ROWS):
        assert torch.equal(seg[ours], state["embedding.seg.embedding.weight"][theirs])


def test_missing_and_unexpected_keys_load_nothing():
    state = read_tencentpretrain_state(BIN)
    cfg = tencentpretrain_model_config(CONFIG, state)
    model = Model(cfg)
    before = model.embedding.parts["word"].weight.detach().clone()
    bad = dict(state)
    bad.pop("encoder.transformer.1.feed_forward.linear_2.bias")
    with pytest.raises(CheckpointError, match="missing"):
        load_weights_checked(model, map_state(bad, cfg), "bad.bin")
    assert torch.equal(model.embedding.parts["word"].weight, before)
    extra = dict(state, **{"encoder.adapter.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="no modaloom counterpart"):
        map_state(extra, cfg)
    wrong = dict(state, **{"target.sp.linear_2.weight": torch.zeros(3, 128)})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights_checked(model, map_state(wrong, cfg), "wrong.bin")


def test_unsafe_or_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_tencentpretrain_state(tmp_path / "absent.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_tencentpretrain_state(junk)


def test_export_reproduces_the_tencentpretrain_state_dict(converted, tmp_path):
    state = read_tencentpretrain_state(BIN)
    exported = modaloom_to_tencentpretrain(converted)
    assert set(exported) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(exported[key], value, rtol=1e-6, atol=1e-7, msg=key)
    path = tmp_path / "roundtrip.bin"
    torch.save(exported, path)
    again = convert_tencentpretrain(path, CONFIG)
    for (name, a), b in zip(converted.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
