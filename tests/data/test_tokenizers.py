"""Tokenizers: parity with transformers' fast tokenizers on the shared corpora, special tokens, save/load."""

from __future__ import annotations

import pytest

from modaloom.data.tokenizers import load_tokenizer, load_tokenizer_dir
from modaloom.errors import DataError
from tests.data.text_fixtures import shared_or_skip, write_vocab


def _lines(name: str, count: int, column: int | None = None) -> list[str]:
    path = shared_or_skip(f"corpora/{name}")
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line:
                out.append(line.split("\t")[column] if column is not None else line)
            if len(out) >= count:
                break
    return out


def test_wordpiece_chinese_matches_bert_fast():
    transformers = pytest.importorskip("transformers")
    vocab = shared_or_skip("models/google_zh_vocab.txt")
    lines = _lines("book_review_train_bert.txt", 2000) + _lines("CLUECorpusSmall_sampled.txt", 300)
    ours = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    theirs = transformers.BertTokenizerFast(vocab=str(vocab))
    assert ours.encode_batch(lines) == theirs(lines, add_special_tokens=False)["input_ids"]


def test_wordpiece_english_uncased_matches_bert_fast():
    transformers = pytest.importorskip("transformers")
    vocab = shared_or_skip("models/google_uncased_en_vocab.txt")
    lines = _lines("news-commentary-v13-en-zh_sampled.txt", 1500, column=0)
    ours = load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "lowercase": True})
    theirs = transformers.BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    assert ours.encode_batch(lines) == theirs(lines, add_special_tokens=False)["input_ids"]
    assert ours.encode("[CLS] hello [SEP]") == [ours.cls_id, *ours.encode("hello"), ours.sep_id]


def test_byte_level_bpe_matches_gpt2_fast():
    transformers = pytest.importorskip("transformers")
    vocab = shared_or_skip("models/huggingface_gpt2_vocab.txt")
    merges = shared_or_skip("models/huggingface_gpt2_merges.txt")
    lines = _lines("news-commentary-v13-en-zh_sampled.txt", 1500)  # English and Chinese, tab inside
    ours = load_tokenizer({"type": "bpe", "vocab": str(vocab), "merges": str(merges)})
    with open(vocab, encoding="utf-8") as handle:
        table = {line.rstrip("\n"): i for i, line in enumerate(handle)}
    with open(merges, encoding="utf-8") as handle:
        pairs = [tuple(line.rstrip("\n").split(" ")) for line in handle if not line.startswith("#version")]
    theirs = transformers.GPT2TokenizerFast(vocab=table, merges=[p for p in pairs if len(p) == 2])
    assert ours.encode_batch(lines) == theirs(lines)["input_ids"]
    assert ours.decode(ours.encode(lines[0])) == lines[0]


def test_sentencepiece_model_and_special_roles():
    model = shared_or_skip("models/cluecorpussmall_spm.model")
    tok = load_tokenizer({"type": "sentencepiece", "vocab": str(model)})
    ids = tok.encode("这是一个测试")
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == "这是一个测试"
    assert {"pad", "unk"} <= set(tok.special_ids())


def test_missing_special_token_is_named(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    with pytest.raises(DataError, match=r"no mask token.*'\[MASK\]'.*'<mask>'"):
        tok.special_id("mask", needed_by="processor 'mlm'")
    assert tok.sentinel_ids == []


def test_configured_special_token_and_sentinels(tmp_path):
    vocab = write_vocab(tmp_path, sentinels=5)
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "special_tokens": {"mask": "[unused3]"}})
    assert tok.mask_id == 3
    assert tok.sentinel_ids == [1, 2, 3, 4, 5]


def test_save_and_reload_keeps_ids_and_fingerprint(tmp_path):
    vocab = write_vocab(tmp_path)
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(vocab)})
    tok.save(tmp_path / "saved")
    again = load_tokenizer_dir(tmp_path / "saved")
    text = "The cats sat on the mat."
    assert again.encode(text) == tok.encode(text)
    assert again.fingerprint() == tok.fingerprint()
    assert load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "lowercase": False}).fingerprint() \
        != tok.fingerprint()


def test_char_and_space_tokenizers(tmp_path):
    vocab = tmp_path / "chars.txt"
    vocab.write_text("[PAD]\n[UNK]\n你\n好\nhi\n", encoding="utf-8")
    char = load_tokenizer({"type": "char", "vocab": str(vocab)})
    assert char.encode("你 好吗") == [2, 3, 1]
    space = load_tokenizer({"type": "space", "vocab": str(vocab)})
    assert space.encode("hi 你  x") == [4, 2, 1]


def test_whole_word_table_marks_continuations(tmp_path):
    tok = load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path))})
    ids = tok.encode("cats")
    assert [tok.id_to_token(i) for i in ids] == ["cat", "##s"]
    assert tok.word_start_table()[ids].tolist() == [True, False]


def test_bad_vocabulary_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer({"type": "wordpiece", "vocab": str(tmp_path / "nope.txt")})
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"[UNK]\n\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_tokenizer({"type": "wordpiece", "vocab": str(bad)})
