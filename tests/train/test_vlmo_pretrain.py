"""``modaloom pretrain --config vlmo/tiny`` on tiny coloured squares and their captions: one mixture-of-modality-
experts model trains its contrastive head (dual view) and image-text matching with hard negatives (fusion view)
together, the contrastive loss falls, and ``evaluate --task clip_retrieval`` ranks with its dual view."""

from __future__ import annotations

import json

import modaloom
from modaloom.cli.main import main
from tests.tasks.test_clip_tasks import write_pairs, write_vocab


def test_vlmo_pretrains_clr_and_itm_and_evaluates_retrieval(tmp_path, capsys):
    corpus, vocab = write_pairs(tmp_path, "train", 32, 0), write_vocab(tmp_path / "vocab.txt")
    test = write_pairs(tmp_path, "test", 8, 2)
    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["preprocess", "--processor", "vilt", "--corpus", str(corpus), "--vocab", str(vocab), "--out",
                 str(data), "--seq-length", "16", "--option", "image_height=16", "--option", "image_width=16",
                 "--option", "mismatch_prob=0", "--option", "norm=clip"]) == 0  # matching pairs only
    assert main(["pretrain", "--config", "vlmo/tiny", "--data", str(data), "--out", str(out), "--steps", "60",
                 "--batch-size", "8", "--lr", "5e-4", "train.threads=1", "train.log_every=5",
                 "model.embedding.streams.0.vocab_size=0"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clr, itm = [r["clr_loss"] for r in rows], [r["itm_loss"] for r in rows]
    assert all(r["itm_hard_negatives"] == 16 for r in rows)  # 8 pairs: a mined text per image, an image per text
    # the contrastive loss falls well below log 8; matching (2 negatives per positive) is still near its prior in
    # so few steps (test_vlmo_itm_learns_from_mined_negatives trains it longer): it must not diverge
    assert clr[-1] < 0.7 * clr[0] and itm[-1] < itm[0] + 0.02, (clr, itm)
    model = modaloom.load(out / "model")
    assert sum(1 for k in model.state_dict() if k.endswith("experts.vl.norm.weight")) == 1  # the top layer only
    tuned = tmp_path / "tuned"  # clip_retrieval keeps the clr head (dual view) and drops itm
    assert main(["finetune", "--task", "clip_retrieval", "--model", str(out / "model"), "--vocab", str(vocab),
                 "--train", str(corpus), "--dev", str(test), "--out", str(tuned), "--epochs", "1", "--batch-size", "8", "--lr", "1e-4",
                 "train.threads=1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--task", "clip_retrieval", "--model", str(tuned / "model"), "--input", str(test)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 8 and metrics["t2i_r@5"] == 1.0, metrics  # four colours: in the top 2 of 8


def squares_itm_run(tmp_path, mismatch_prob: float, steps: int, log_every: int, *overrides: str) -> list[dict]:
    """256 pairs of 4 colours preprocessed by ``vilt`` (random mismatches at ``mismatch_prob``), ``vlmo/tiny``
    pre-trained on them at batch 16, lr 1e-3; the logged rows that carry ``itm_loss``."""
    corpus, vocab = write_pairs(tmp_path, "train", 256, 0), write_vocab(tmp_path / "vocab.txt")
    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["preprocess", "--processor", "vilt", "--corpus", str(corpus), "--vocab", str(vocab), "--out",
                 str(data), "--seq-length", "16", "--option", "image_height=16", "--option", "image_width=16",
                 "--option", f"mismatch_prob={mismatch_prob:g}", "--option", "norm=clip"]) == 0
    assert main(["pretrain", "--config", "vlmo/tiny", "--data", str(data), "--out", str(out), "--steps", str(steps),
                 "--batch-size", "16", "--lr", "1e-3", "train.threads=1", f"train.log_every={log_every}",
                 "train.progress=false", "train.save_every=0", "model.embedding.streams.0.vocab_size=0",
                 *overrides]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"itm_loss"' in line]


def test_vlmo_fusion_view_learns_image_text_matching(tmp_path):
    """ITM alone (random mismatches, 4 colours) through the fusion view: after a plateau at chance (steps
    ~0-300, the cross-modal interaction is learnt late, as in ViLT) the matching accuracy rises well above
    chance. Its ceiling is ~0.875: a quarter of the random mismatches show the caption's own colour."""
    rows = squares_itm_run(tmp_path, 0.5, 900, 100, "model.targets=[{type: itm}]")
    first, last = rows[0], rows[-1]
    assert abs(first["itm_accuracy"] - 0.5) < 0.15 and last["itm_accuracy"] > 0.7, rows
    assert last["itm_loss"] < 0.6 < first["itm_loss"], rows


def test_vlmo_itm_learns_from_mined_negatives(tmp_path):
    """``vlmo/tiny`` as configured (clr, then itm with negatives mined from clr's similarities) on matching pairs
    of 4 colours: the ITM loss leaves its prior (0.636, one positive for two mined negatives, accuracy 0.667 =
    always "no") and the head tells matches from mined mismatches. The vilt processor masks every caption; itm
    reads them as written (``unmasked_text``), so rows of the same caption are known matches and never mined, and
    no positive loses its colour word. Read masked, it stayed at the prior (docs/objectives.md)."""
    rows = squares_itm_run(tmp_path, 0, 300, 50)
    first, last = rows[0], rows[-1]
    assert all(r["itm_hard_negatives"] == 32 for r in rows)  # every anchor finds another colour on both sides
    assert first["itm_loss"] > 0.6 and abs(first["itm_accuracy"] - 2 / 3) < 0.05, rows  # at the prior
    assert last["itm_loss"] < 0.3 and last["itm_accuracy"] > 0.9, rows
