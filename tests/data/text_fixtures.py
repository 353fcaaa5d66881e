"""Tiny vocabularies and corpora shared by the text data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tencentpretrain"
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "a",
    "dog",
    "ran",
    "to",
    "park",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "house",
    "tree",
    "bird",
    "sky",
    "sun",
    "moon",
    "star",
    "walk",
    "talk",
    "jump",
    "play",
    "read",
    "write",
]


def shared_or_skip(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def write_vocab(directory: Path, sentinels: int = 20, extra: tuple[str, ...] = ()) -> Path:
    """A WordPiece vocab.txt: BERT specials, [unusedN] slots, words, '##s' and letters."""
    tokens = [
        "[PAD]",
        *(f"[unused{i}]" for i in range(1, sentinels + 1)),
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in WORDS]  # "a" is a word already
    tokens += [*WORDS, "##s", "##ing", *letters, ".", ",", *extra]
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def sentence(rng_index: int, length: int = 6) -> str:
    return " ".join(WORDS[(rng_index * 7 + k * 3) % len(WORDS)] for k in range(length))


def write_documents(path: Path, documents: int = 30, sentences: int = 3) -> Path:
    lines = []
    for d in range(documents):
        lines += [sentence(d * sentences + s, 4 + (d + s) % 5) + " ." for s in range(sentences)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
