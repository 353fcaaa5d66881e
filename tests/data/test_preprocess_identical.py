"""Speed work on preprocessing must not change a byte of what it writes.

The digests below were recorded with the code before the preprocess speed-ups (commit 56a8403): the shard
files of a small Chinese corpus (book_review's first documents plus mixed-script lines) and the skips.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modaloom.data.config import TokenizerConfig
from modaloom.data.preprocess import preprocess
from tests.data.text_fixtures import shared_or_skip

EXPECTED = {
    ("bert", 2): (309, "c53f8af61ffe30a00c6b8e113ea3212303c9ace9d0c84a11dc6b6c90cb98a718"),
    ("albert", 1): (185, "e6ead83087aa08c5d5e3d218d80c76fba9783a3e62cb8d0594b09ad1dc94e7fd"),
    ("lm", 1): (135, "084d8ea3c5d0aaa6a44904fec2b1a688ddcb3ac18ff833699435ccebf5783662"),
}


def _corpus(tmp_path: Path) -> Path:
    lines = shared_or_skip("corpora/book_review_train_bert.txt").read_text(encoding="utf-8").split("\n")[:600]
    lines += ["", "iPhone 很好用, 2019年买的ＡＢＣ。", "The cat sat on the mat.", "中\u3000文 [MASK] 好", ""]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _digest(out: Path) -> str:
    """Shard files byte for byte, and each skip's line and reason (its file is this test's temp path)."""
    digest = hashlib.sha256()
    for path in sorted(out.glob("shard-*/*")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for row in map(json.loads, (out / "skipped.jsonl").read_text(encoding="utf-8").splitlines()):
        digest.update(f"{row['line']} {row['reason']}".encode())
    return digest.hexdigest()


@pytest.mark.parametrize(("processor", "workers"), list(EXPECTED))
def test_written_dataset_is_unchanged(tmp_path, processor, workers):
    vocab = shared_or_skip("models/google_zh_vocab.txt")
    out = tmp_path / processor
    manifest = preprocess(processor, [_corpus(tmp_path)], out, seq_length=64, workers=workers, chunk_records=64,
                          tokenizer=TokenizerConfig(type="wordpiece", vocab=str(vocab)))
    records, digest = EXPECTED[(processor, workers)]
    assert manifest["counts"]["records"] == records
    assert _digest(out) == digest
