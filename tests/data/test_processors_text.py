"""Text processors on tiny inputs: stored records, example keys and shapes, special tokens, masking rates."""

from __future__ import annotations

import numpy as np
import pytest

from modaloom.data.config import MaskingOptions
from modaloom.data.masking import bart_text_infilling, mask_tokens, t5_span_corruption
from modaloom.data.processors.base import IGNORE_INDEX, SourceRecord, build_processor
from modaloom.data.tokenizers import load_tokenizer
from modaloom.errors import ConfigError, DataError
from tests.data.text_fixtures import sentence, write_vocab


@pytest.fixture()
def tok(tmp_path):
    return load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path))})


def documents(count=12, sentences=3):
    return [SourceRecord("c.txt", d * 4 + 1, [sentence(d * 3 + s, 5 + s) for s in range(sentences)])
            for d in range(count)]


def run(name, tok, records, seq_length=32, **options):
    proc = build_processor(name, tok, seq_length, options)
    result = proc.process_chunk(records, 0)
    packed = result.batch.packed()
    stored = []
    for i in range(result.batch.count):
        row = {}
        for field, (flat, lengths) in packed.items():
            if lengths is None:
                row[field] = flat[i]
            else:
                start = int(lengths[:i].sum())
                row[field] = flat[start:start + lengths[i]]
        stored.append(row)
    return proc, stored, result


def test_bert_pairs_and_masking(tok):
    proc, stored, result = run("bert", tok, documents(), seq_length=24)
    assert stored and not result.skips
    rng = np.random.default_rng(0)
    labels = set()
    for row in stored:
        ex = proc.make_example(row, rng)
        ids = row["input_ids"]
        assert len(ids) <= 24 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
        assert ids[int(row["first_length"]) - 1] == tok.sep_id
        assert ex["input_ids"].shape == ex["mlm_labels"].shape == ex["segment_ids"].shape
        assert ex["sp_labels"].shape == ()
        masked = ex["mlm_labels"] != IGNORE_INDEX
        assert masked.any() and not masked[0] and not masked[-1]
        np.testing.assert_array_equal(ex["mlm_labels"][masked], ids[masked])
        labels.add(int(ex["sp_labels"]))
    assert labels == {0, 1}


def test_albert_sentence_order(tok):
    proc, stored, _ = run("albert", tok, documents(count=20), seq_length=40)
    labels = [int(r["sp_label"]) for r in stored]
    assert 0 < sum(labels) < len(labels)


def test_mlm_splits_long_documents(tok):
    long_doc = SourceRecord("c.txt", 1, [sentence(i, 8) for i in range(10)])
    proc, stored, _ = run("mlm", tok, [long_doc], seq_length=16)
    assert len(stored) > 1
    total = sum(len(r["input_ids"]) - 2 for r in stored)
    assert total == sum(len(tok.encode(s)) for s in long_doc.value)
    ex = proc.make_example(stored[0], np.random.default_rng(1))
    assert set(ex) == {"input_ids", "mlm_labels", "segment_ids"}


def test_masking_rate_and_80_10_10():
    rng = np.random.default_rng(0)
    ids = np.arange(100, 1100)
    maskable = np.ones(1000, dtype=bool)
    options = MaskingOptions()
    picked = replaced_mask = replaced_random = 0
    for _ in range(50):
        out, labels = mask_tokens(ids, maskable, rng, options, mask_id=1, vocab_size=5000)
        chosen = labels != IGNORE_INDEX
        picked += chosen.sum()
        replaced_mask += (out[chosen] == 1).sum()
        replaced_random += ((out[chosen] != 1) & (out[chosen] != ids[chosen])).sum()
    assert picked == 50 * 150
    assert abs(replaced_mask / picked - 0.8) < 0.03
    assert abs(replaced_random / picked - 0.1) < 0.02


def test_whole_word_masking_masks_all_pieces():
    rng = np.random.default_rng(3)
    ids = np.arange(60)
    word_start = np.array([True, False, False] * 20)
    for _ in range(20):
        _, labels = mask_tokens(ids, np.ones(60, bool), rng, MaskingOptions(whole_word=True), 0, 100, word_start)
        chosen = (labels != IGNORE_INDEX).reshape(20, 3)
        assert (chosen.all(axis=1) | ~chosen.any(axis=1)).all()


def test_span_masking_makes_contiguous_spans():
    rng = np.random.default_rng(5)
    _, labels = mask_tokens(np.arange(400), np.ones(400, bool), rng, MaskingOptions(span=True), 0, 1000)
    chosen = labels != IGNORE_INDEX
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], chosen.astype(int), [0]]))))[::2]
    assert chosen.sum() == 60 and runs.mean() > 1.5


def test_t5_sentinel_layout():
    rng = np.random.default_rng(0)
    ids = np.arange(100, 200)
    sentinels = list(range(1, 40))
    inputs, targets = t5_span_corruption(ids, rng, sentinels)
    in_sent = [t for t in inputs if t < 100]
    tg_sent = [t for t in targets if t < 100]
    assert in_sent == tg_sent == sentinels[:len(in_sent)]
    assert targets[0] == sentinels[0]
    # putting the spans back gives the original
    rebuilt, spans, current = [], {}, None
    for t in targets:
        if t < 100:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    for t in inputs:
        rebuilt.extend(spans[t] if t < 100 else [t])
    assert rebuilt == ids.tolist()
    assert len(targets) - len(in_sent) == 15


def test_t5_processor_example(tok):
    records = [SourceRecord("c.txt", i + 1, sentence(i, 12)) for i in range(10)]
    proc, stored, _ = run("t5", tok, records, seq_length=32)
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    assert ex["input_ids"][-1] == tok.eos_id and ex["lm_labels"][-1] == tok.eos_id
    assert ex["decoder_input_ids"][0] == tok.optional_id("bos")
    np.testing.assert_array_equal(ex["decoder_input_ids"][1:], ex["lm_labels"][:-1])
    assert ex["lm_labels"][0] == tok.sentinel_ids[0]


def test_t5_needs_sentinels(tmp_path):
    vocab = write_vocab(tmp_path, sentinels=0)
    with pytest.raises(DataError, match="sentinel"):
        build_processor("t5", load_tokenizer({"type": "wordpiece", "vocab": str(vocab)}), 64)


def test_bart_infilling_and_permutation(tok):
    rng = np.random.default_rng(0)
    ids = np.arange(100, 400)
    out = bart_text_infilling(ids, rng, mask_id=1)
    kept = out[out != 1]
    assert 0.6 * 300 < len(kept) < 0.8 * 300
    assert (np.diff(kept) > 0).all()  # order kept; masks replace whole spans
    proc, stored, _ = run("bart", tok, documents(count=3, sentences=4), seq_length=64)
    ex = proc.make_example(stored[0], np.random.default_rng(2))
    original = np.asarray(stored[0]["input_ids"], dtype=np.int64)
    np.testing.assert_array_equal(ex["lm_labels"][:-1], original)
    assert tok.mask_id in ex["input_ids"].tolist()


def test_gsg_masks_whole_sentences(tok):
    proc, stored, _ = run("gsg", tok, documents(count=2, sentences=5), seq_length=96)
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    sentences = proc.sentences(stored[0])
    n_masks = ex["input_ids"].tolist().count(tok.mask_id)
    assert n_masks == round(len(sentences) * 0.3)
    assert len(ex["lm_labels"]) - 1 + len(ex["input_ids"]) - 1 - n_masks == len(stored[0]["input_ids"])


def test_lm_and_bilm_shift(tok):
    records = [SourceRecord("c.txt", i + 1, sentence(i, 9)) for i in range(8)]
    proc, stored, _ = run("lm", tok, records, seq_length=16)
    assert all(len(r["input_ids"]) <= 17 for r in stored)
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    np.testing.assert_array_equal(ex["input_ids"][1:], ex["lm_labels"][:-1])
    assert ex["input_ids"][0] == tok.bos_id
    proc, stored, _ = run("bilm", tok, records, seq_length=16)
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    ids = stored[0]["input_ids"]
    np.testing.assert_array_equal(ex["bilm_labels_backward"], ids[:-2])
    np.testing.assert_array_equal(ex["lm_labels"], ids[2:])


def test_prefixlm_labels_only_on_target(tok):
    record = SourceRecord("c.txt", 1, "the cat sat\ta dog ran to park")
    proc, stored, _ = run("prefixlm", tok, [record])
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    prefix = int(ex["prefix_lengths"])
    assert prefix == len(tok.encode("the cat sat")) + 2
    labelled = np.flatnonzero(ex["lm_labels"] != IGNORE_INDEX)
    assert labelled[0] == prefix - 1 and labelled[-1] == len(ex["input_ids"]) - 2


def test_cls_rows_and_bad_labels(tok):
    rows = [SourceRecord("d.tsv", 2, {"label": "1", "text_a": "the cat", "text_b": "a dog"}),
            SourceRecord("d.tsv", 3, {"label": "x", "text_a": "the cat"}),
            SourceRecord("d.tsv", 4, {"label": "0", "text_a": " ".join(["sun"] * 50)})]
    proc, stored, result = run("cls", tok, rows, seq_length=16)
    assert len(stored) == 2
    assert [(s.line, s.reason.split(":")[0]) for s in result.skips] == [(3, "bad_label")]
    assert result.counters == {"truncated": 1}
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    assert int(ex["labels"]) == 1 and ex["segment_ids"].tolist().count(1) == 3  # a dog [SEP]
    proc, stored, _ = run("cls_mlm", tok, rows, seq_length=16)
    assert "mlm_labels" in proc.make_example(stored[1], np.random.default_rng(0))


def test_mt_pairs(tok):
    proc, stored, result = run("mt", tok, [SourceRecord("p.txt", 1, "the cat\ta dog ran"),
                                            SourceRecord("p.txt", 2, "no tab here")])
    assert len(stored) == 1 and result.skips[0].reason.startswith("missing_tab")
    ex = proc.make_example(stored[0], np.random.default_rng(0))
    assert ex["input_ids"].tolist() == [*tok.encode("the cat"), tok.eos_id]
    assert ex["lm_labels"].tolist() == [*tok.encode("a dog ran"), tok.eos_id]


def test_unknown_option_and_processor_are_config_errors(tok):
    with pytest.raises(ConfigError, match="valid keys"):
        build_processor("bert", tok, 32, {"mask_prob": 0.2})
    with pytest.raises(ConfigError, match="did you mean 'bert'"):
        build_processor("bret", tok, 32)


def test_mlm_needs_a_mask_token(tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncat\n", encoding="utf-8")
    with pytest.raises(DataError, match="no mask token"):
        build_processor("mlm", load_tokenizer({"type": "wordpiece", "vocab": str(vocab)}), 32)


def _truncate_one_at_a_time(a, b, max_tokens, rng):
    """The reference: Google BERT's truncate_seq_pair, one token and one draw per step."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
    return a, b


def test_truncate_pair_matches_the_step_by_step_reference_and_its_random_draws():
    from modaloom.data.processors.bert import _truncate_pair

    cases = np.random.default_rng(0)
    for _ in range(3000):
        la, lb, limit = (int(x) for x in cases.integers(0, 30, 3))
        a, b = list(range(la)), list(range(100, 100 + lb))
        seed = int(cases.integers(1 << 30))
        ref_rng, rng = np.random.default_rng(seed), np.random.default_rng(seed)
        assert _truncate_pair(a, b, limit, rng) == _truncate_one_at_a_time(a, b, limit, ref_rng), (la, lb, limit)
        assert rng.random() == ref_rng.random()  # the same number of draws: later records are unchanged


def test_truncate_pair_is_linear_in_the_line_length():
    """A 1 MB line is about 340k tokens; trimming it one token at a time took seconds (quadratic)."""
    import time

    from modaloom.data.processors.bert import _truncate_pair

    started = time.perf_counter()
    a, b = _truncate_pair(list(range(1_000_000)), [1, 2, 3], 125, np.random.default_rng(0))
    assert len(a) + len(b) == 125 and b == [1, 2, 3]
    assert time.perf_counter() - started < 2.0
