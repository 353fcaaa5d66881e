"""`convert --from tencentpretrain --task qa`: a run_cmrc.py checkpoint (backbone + output_layer) becomes a
modaloom qa model whose start/end logits are TencentPretrain's, and `predict` runs on the converted folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modaloom.cli.main import main
from modaloom.errors import CheckpointError
from modaloom.interop.tencentpretrain import (
    convert_tencentpretrain_span,
    read_tencentpretrain_state,
    tencentpretrain_batch,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tencentpretrain"
BIN = SHARED / "checkpoints" / "bert_tiny_book_review_1k.bin"
CONFIG = SHARED / "checkpoints" / "bert_tiny_config.json"
REFERENCE = SHARED / "checkpoints" / "bert_tiny_book_review_1k_reference.npz"
VOCAB = SHARED / "models" / "google_zh_vocab.txt"
CMRC = SHARED / "datasets" / "test_data" / "cmrc"

pytestmark = pytest.mark.skipif(not (BIN.is_file() and REFERENCE.is_file() and VOCAB.is_file()),
                                reason="TencentPretrain checkpoint not available under ../shared")


@pytest.fixture(scope="module")
def cmrc_checkpoint(tmp_path_factory):
    """The shared tiny BERT's backbone with a run_cmrc.py head (output_layer, 2 x hidden) in TP's layout."""
    state = {k: v for k, v in read_tencentpretrain_state(BIN).items() if not k.startswith("target.")}
    generator = torch.Generator().manual_seed(0)
    state["output_layer.weight"] = torch.randn(2, 128, generator=generator) * 0.1
    state["output_layer.bias"] = torch.tensor([0.3, -0.2])
    path = tmp_path_factory.mktemp("tp") / "cmrc_model.bin"
    torch.save(state, path)
    return path, state


def test_start_end_logits_are_tencentpretrain_s(cmrc_checkpoint):
    path, state = cmrc_checkpoint
    model = convert_tencentpretrain_span(path, CONFIG)
    assert [t.type for t in model.config.targets] == ["span"]
    assert torch.equal(model.targets["span"].output.weight, state["output_layer.weight"])
    ref = np.load(REFERENCE)
    batch = tencentpretrain_batch(torch.from_numpy(ref["input_ids"]), torch.from_numpy(ref["segment_ids"]))
    with torch.no_grad():
        logits = model(batch).logits["span"]
    # TencentPretrain's MachineReadingComprehension: output_layer on its encoder output (the reference hidden)
    expected = torch.from_numpy(ref["hidden"]) @ state["output_layer.weight"].T + state["output_layer.bias"]
    real = batch["attention_mask"].bool()
    assert (logits[real] - expected[real]).abs().max() < 1e-3


def test_cli_records_the_task_and_predict_runs(cmrc_checkpoint, tmp_path, capsys):
    path, _ = cmrc_checkpoint
    out = tmp_path / "qa_model"
    assert main(["convert", "--from", "tencentpretrain", "--to", "modaloom", str(path), str(out), "--config",
                 str(CONFIG), "--task", "qa"]) == 0
    section = json.loads((out / "config.json").read_text())["task"]
    assert section["name"] == "qa" and section["seq_length"] == 128
    assert section["options"]["tokenization"] == "char" and section["options"]["decoding"] == "tencentpretrain"
    shutil.copyfile(VOCAB, out / "vocab.txt")  # the vocabulary run_cmrc.py was given
    predictions = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(out), "--input", str(CMRC / "dev.json"), "--out", str(predictions)]) == 0
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 3 and all(set(r) == {"id", "answer", "score"} for r in records)


def test_a_checkpoint_without_the_cmrc_head_is_refused(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not a run_cmrc.py checkpoint"):
        convert_tencentpretrain_span(BIN, CONFIG)
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(tmp_path), str(tmp_path / "o"), "--task",
                 "qa"]) == 2
    assert "--task is only used with --from tencentpretrain" in capsys.readouterr().err
