"""The CJK shortcut of WordPiece gives exactly the backend's ids, whatever surrounds the looked-up characters."""

from __future__ import annotations

import random

import pytest

from modaloom.data.tokenizers import load_tokenizer
from modaloom.data.wordpiece_fast import RUN, SEPARATOR, IsolatedChars
from tests.data.text_fixtures import shared_or_skip, write_vocab

TRICKY = [
    "中文", "我爱北京。", "你好，世界！", "the cat 中 sat.", "中 a 中", "a中a", "中  中\t中\u3000中", "",
    " ", "中", "[CLS]中[SEP]", "中[MASK]文", "[中]", "iPhone很好用,2019年", "ＡＢＣ中１２３", "中\u0301文",
    "\u0301中", "e\u0301中", "中\x00文", "中\x01a\x01中", "中\ufffd文", "\uf900\uf901中", "\U00020000\U0002f800",
    "中\u037e文\u0387", "……——“引号”", "中 the cat sat on the mat 文", "cat cat cat 中", "ß中ẞ", "İ中Σς",
    "ab\u200bcd中", "中。\n文", "##中", "中##s",
]


def _backend_ids(tok, texts):
    return [e.ids for e in tok.backend.encode_batch(list(texts), add_special_tokens=False)]


@pytest.mark.parametrize("lowercase", [None, False])
def test_tricky_texts_match_the_backend(tmp_path, lowercase):
    vocab = write_vocab(tmp_path, extra=("中", "文", "。", "，", "\uf900", "好"))
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "lowercase": lowercase})
    assert tok.encode_batch(TRICKY) == _backend_ids(tok, TRICKY)
    fresh = load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "lowercase": lowercase})
    for text in TRICKY:  # one at a time too: the table grows between calls
        assert fresh.encode(text) == _backend_ids(tok, [text])[0], text


def test_random_mixtures_match_the_backend(tmp_path):
    vocab = write_vocab(tmp_path, extra=("中", "文", "。", "好"))
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    pool = ["中", "文", "好", "。", "，", " ", "\t", "a", "cat", "Z", "9", "\u0301", "\x00", "[MASK]", "[", "]",
            "#", "\u3000", "\uf900", "é", "ẞ", "\u200b"]
    rng = random.Random(3)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 25))) for _ in range(3000)]
    assert tok.encode_batch(texts) == _backend_ids(tok, texts)


def test_classification(tmp_path):
    vocab = write_vocab(tmp_path, extra=("中", "。"))
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "special_tokens": {"mask": "[MASK]"}})
    chars = IsolatedChars(tok.backend)
    chars.classify(set("中。 \tab9\u0301\x00[M"))
    table = chars.table
    assert table["中"] == tok.token_to_id("中") and table["。"] == tok.token_to_id("。")
    assert table[" "] == table["\t"] == SEPARATOR
    for c in "ab9\u0301\x00":  # join neighbours, or vanish and let neighbours join
        assert table[c] == RUN
    assert table["["] == table["M"] == RUN  # part of a special token: matched before normalization


def test_chinese_corpus_matches_the_backend():
    vocab = shared_or_skip("models/google_zh_vocab.txt")
    path = shared_or_skip("corpora/CLUECorpusSmall_sampled.txt")
    lines = path.read_text(encoding="utf-8").splitlines()[:400]
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    assert tok.encode_batch(lines) == _backend_ids(tok, lines)
