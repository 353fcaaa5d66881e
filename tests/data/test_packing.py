"""Document packing at preprocess time (``packing`` option of mlm and lm): contents, separators, lengths,
masks that never touch separators or padding, bert's refusal, and the end-to-end preprocess + pretrain path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from modaloom.cli.main import main
from modaloom.data.collate import Collator
from modaloom.data.processors.base import IGNORE_INDEX, SourceRecord, build_processor
from modaloom.data.processors.text_common import greedy_groups
from modaloom.data.tokenizers import load_tokenizer
from modaloom.errors import ConfigError
from tests.data.test_processors_text import run
from tests.data.text_fixtures import sentence, write_vocab


@pytest.fixture()
def tok(tmp_path):
    return load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path))})


def short_documents(count=30):
    """Documents of 1-3 short sentences (a few tokens each), like book reviews."""
    return [SourceRecord("c.txt", d * 5 + 1, [sentence(d * 3 + s, 2 + (d + s) % 4) for s in range(1 + d % 3)])
            for d in range(count)]


def test_greedy_groups_fill_in_order_and_never_overflow():
    assert greedy_groups([3, 4, 2, 5, 1, 9, 1], 9) == [[0, 1, 2], [3, 4], [5], [6]]
    assert greedy_groups([], 5) == []
    assert greedy_groups([12], 5) == [[0]]  # too long: alone


def test_mlm_packing_keeps_every_document_between_separators(tok):
    records = short_documents()
    _, plain, _ = run("mlm", tok, records, seq_length=32)
    _, packed, result = run("mlm", tok, short_documents(), seq_length=32, packing="documents")
    assert not result.skips and len(packed) < len(plain) / 2
    documents = [list(r["input_ids"][1:-1]) for r in plain]
    found = []
    for row in packed:
        ids = list(row["input_ids"])
        assert len(ids) <= 32 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
        assert tok.cls_id not in ids[1:]
        piece: list[int] = []
        for t in ids[1:]:
            if t == tok.sep_id:
                found.append(piece)
                piece = []
            else:
                piece.append(t)
    assert found == documents  # same documents, same order, one [SEP] after each
    for row, following in zip(packed, packed[1:]):  # greedy: the next record's first document did not fit
        first = list(following["input_ids"][1:]).index(tok.sep_id) + 1
        assert len(row["input_ids"]) + first > 32


def test_mlm_packing_splits_long_documents_as_before(tok):
    long_doc = SourceRecord("c.txt", 1, [sentence(i, 8) for i in range(10)])
    records = [*short_documents(3), long_doc, *short_documents(3)]
    _, packed, _ = run("mlm", tok, records, seq_length=16, packing="documents")
    assert all(len(r["input_ids"]) <= 16 for r in packed)
    text = sum(len(r["input_ids"]) - 1 - list(r["input_ids"]).count(tok.sep_id) for r in packed)
    expected = sum(len(tok.encode(s)) for r in records for s in r.value)
    assert text == expected  # nothing lost or repeated


def test_masks_never_fall_on_separators_or_padding(tok):
    proc, packed, _ = run("mlm", tok, short_documents(), seq_length=32, packing="documents")
    collate = Collator(proc.pad_value, "max_length", 32)
    for seed in range(20):
        examples = [proc.make_example(r, np.random.default_rng([seed, i])) for i, r in enumerate(packed)]
        batch = collate(examples)
        labels = batch["mlm_labels"].numpy()
        ids = np.full(labels.shape, tok.pad_id)  # the stored ids (the input may hold random replacements)
        for row, record in enumerate(packed):
            ids[row, :len(record["input_ids"])] = record["input_ids"]
        special = np.isin(ids, [tok.cls_id, tok.sep_id, tok.pad_id])
        assert special.sum() > len(packed) * 3
        assert (labels[special] == IGNORE_INDEX).all()
        assert (labels[batch["attention_mask"].numpy() == 0] == IGNORE_INDEX).all()
    assert (labels != IGNORE_INDEX).any()


def test_packing_is_recorded_and_defaults_to_none(tok):
    assert build_processor("mlm", tok, 32).manifest_entry()["options"]["packing"] == "none"
    assert build_processor("lm", tok, 32).manifest_entry()["options"]["packing"] == "stream"
    entry = build_processor("mlm", tok, 32, {"packing": "documents"}).manifest_entry()
    assert entry["options"]["packing"] == "documents"
    with pytest.raises(ConfigError, match="valid choices: documents, none"):
        build_processor("mlm", tok, 32, {"packing": "sentences"})


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_sentence_pair_processors_refuse_packing_and_name_mlm(tok, name):
    with pytest.raises(ConfigError, match="--processor mlm with --option packing=documents"):
        build_processor(name, tok, 32, {"packing": "documents"})


def lm_documents(count=12):
    return [SourceRecord("c.txt", i + 1, sentence(i, 3 + i % 5)) for i in range(count)]


def test_lm_stream_is_the_default_and_unchanged(tok):
    _, default, _ = run("lm", tok, lm_documents(), seq_length=16)
    _, stream, _ = run("lm", tok, lm_documents(), seq_length=16, packing="stream")
    assert [list(r["input_ids"]) for r in default] == [list(r["input_ids"]) for r in stream]
    assert all(len(r["input_ids"]) == 17 for r in default[:-1])


def test_lm_documents_packing_cuts_no_short_document(tok):
    records = lm_documents()
    _, packed, _ = run("lm", tok, records, seq_length=16, packing="documents")
    _, alone, _ = run("lm", tok, lm_documents(), seq_length=16, packing="none")
    assert len(alone) == len(records)  # each document fits a sequence here
    assert all(list(r["input_ids"]).count(tok.bos_id) == 1 for r in alone)
    assert len(packed) < len(alone)
    flat = [t for r in packed for t in r["input_ids"]]
    assert flat == [t for r in alone for t in r["input_ids"]]  # same documents, in order
    for row in packed:
        ids = list(row["input_ids"])
        assert len(ids) <= 17 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id


def test_lm_documents_packing_splits_a_long_document(tok):
    records = [SourceRecord("c.txt", 1, sentence(0, 40)), *lm_documents(4)]
    _, packed, _ = run("lm", tok, records, seq_length=16, packing="documents")
    assert all(len(r["input_ids"]) <= 17 for r in packed)
    assert sum(list(r["input_ids"]).count(tok.bos_id) for r in packed) == 5


def test_preprocess_and_pretrain_with_packing(tmp_path, capsys):
    from tests.train.data_helpers import sentences, tiny_bert_config
    from tests.train.data_helpers import write_vocab as write_small_vocab

    text = sentences(240, seed=3)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{line}\n\n" for line in text), encoding="utf-8")  # one-sentence documents
    vocab = write_small_vocab(tmp_path / "vocab.txt")
    datasets = {}
    for packing in ("none", "documents"):
        out = tmp_path / f"data-{packing}"
        assert main(["preprocess", "--processor", "mlm", "--corpus", str(corpus), "--vocab", str(vocab),
                     "--out", str(out), "--seq-length", "32", "--option", f"packing={packing}"]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["processor"]["options"]["packing"] == packing
        datasets[packing] = manifest["counts"]["records"]
    assert datasets["documents"] < datasets["none"] / 2 and datasets["none"] == 240
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 3})
    body = yaml.safe_load(config.read_text())
    body["model"]["targets"] = [{"type": "mlm", "tie_weights": True}]  # mlm data has no sentence labels
    body["data"]["padding"] = "max_length"
    config.write_text(yaml.safe_dump(body), encoding="utf-8")
    summaries = {}
    for packing in ("none", "documents"):
        out = tmp_path / f"run-{packing}"
        assert main(["pretrain", "--config", str(config), "--data", str(tmp_path / f"data-{packing}"),
                     "--out", str(out)]) == 0
        summaries[packing] = json.loads((out / "summary.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(0 < r["real_tokens_per_second"] <= r["tokens_per_second"] for r in rows if "loss" in r)
    capsys.readouterr()
    fill = {k: s["real_tokens_per_second"] / s["tokens_per_second"] for k, s in summaries.items()}
    assert fill["none"] < 0.5 < 0.75 < fill["documents"] <= 1.0  # documents of 4-12 words in 32 positions


def test_resume_on_packed_data_is_exact(tmp_path, capsys):
    from modaloom.data.loader import build_loader
    from tests.data.test_loader import assert_same_batches, collect
    from tests.train.data_helpers import sentences
    from tests.train.data_helpers import write_vocab as write_small_vocab

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{line}\n\n" for line in sentences(90, seed=5)), encoding="utf-8")
    out = tmp_path / "data"
    assert main(["preprocess", "--processor", "mlm", "--corpus", str(corpus), "--vocab",
                 str(write_small_vocab(tmp_path / "vocab.txt")), "--out", str(out), "--seq-length", "32",
                 "--option", "packing=documents"]) == 0
    capsys.readouterr()

    def loader():
        return build_loader(out, batch_size=4, seed=3, padding="max_length", seq_length=32)

    full = collect(loader())  # one epoch
    first = loader()
    head = collect(first, 3)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    rest = collect(resumed)
    assert_same_batches(head + rest, full)
    assert len(rest) > 0 and (full[0]["mlm_labels"] != IGNORE_INDEX).any()
