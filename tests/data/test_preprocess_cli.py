"""preprocess / inspect / build-vocab through the CLI on tiny corpora, including bad input."""

from __future__ import annotations

import json

import pytest

from modaloom.cli.main import main
from modaloom.data.processors.base import processor_from_dataset
from modaloom.data.storage import open_dataset
from tests.data.text_fixtures import write_documents, write_vocab


def _preprocess(tmp_path, corpus, processor="bert", *extra):
    out = tmp_path / f"ds_{processor}"
    code = main(["preprocess", "--processor", processor, "--corpus", str(corpus), "--vocab",
                 str(write_vocab(tmp_path)), "--out", str(out), "--seq-length", "32", *extra])
    return code, out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_preprocess_bert_then_load_examples(tmp_path, workers):
    corpus = write_documents(tmp_path / "docs.txt", documents=40)
    code, out = _preprocess(tmp_path, corpus, "bert", "--workers", workers)
    assert code == 0
    ds = open_dataset(out)
    assert len(ds) >= 40 and ds.manifest["counts"]["input_records"] == 40
    assert ds.manifest["tokenizer"]["vocab_size"] == len(write_vocab(tmp_path).read_text().split())
    assert ds.fields["input_ids"].dtype == "uint8"
    processor = processor_from_dataset(out, option_overrides={"masking": {"mask_prob": 0.3}})
    assert processor.options.masking.mask_prob == 0.3
    ex = processor.make_example(ds[0], __import__("numpy").random.default_rng(0))
    assert {"input_ids", "mlm_labels", "segment_ids", "sp_labels"} == set(ex)


def test_worker_count_does_not_change_the_records(tmp_path):
    corpus = write_documents(tmp_path / "docs.txt", documents=60)
    vocab = str(write_vocab(tmp_path))
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        assert main(["preprocess", "--processor", "bert", "--corpus", str(corpus), "--vocab", vocab,
                     "--out", str(out), "--workers", workers]) == 0
        outs.append(open_dataset(out))
    assert len(outs[0]) == len(outs[1])
    assert all((outs[0][i]["input_ids"] == outs[1][i]["input_ids"]).all() for i in range(len(outs[0])))


def test_bad_input_is_recorded_not_dropped(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"the cat sat .\nthe dog ran .\n\n\xff\xfe broken bytes\nred sun .\n\n\n"
                       b"big tree .\nsmall bird .\n")
    code, out = _preprocess(tmp_path, corpus, "mlm")
    assert code == 0
    ds = open_dataset(out)
    assert ds.manifest["skipped"]["by_reason"] == {"not_utf8": 1}
    assert list(ds.skipped())[0]["line"] == 4
    assert ds.manifest["counts"]["input_records"] == 3


def test_tsv_and_jsonl_inputs(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("label\ttext_a\n1\tthe cat sat\n0\ta dog\tran\nz\tred sun\n", encoding="utf-8")
    code, out = _preprocess(tmp_path, tsv, "cls")
    assert code == 0
    reasons = {row["line"]: row["reason"].split(":")[0] for row in open_dataset(out).skipped()}
    assert reasons == {3: "bad_columns", 4: "bad_label"}
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text('{"text": "the cat sat on the mat"}\n{"nope": 1}\nnot json\n', encoding="utf-8")
    code, out = _preprocess(tmp_path, jsonl, "lm")
    assert code == 0
    assert open_dataset(out).manifest["skipped"]["by_reason"] == {"missing_text": 1, "bad_json": 1}


def test_errors_exit_2_and_leave_no_dataset(tmp_path, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n", encoding="utf-8")
    code, out = _preprocess(tmp_path, corpus, "mlm")
    assert code == 2 and "no records were produced" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / f".{out.name}.partial").exists()
    code, _ = _preprocess(tmp_path, tmp_path / "missing.txt", "mlm")
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code, _ = _preprocess(tmp_path, write_documents(tmp_path / "d.txt"), "mlm", "--option", "masking.prob=1")
    assert code == 2 and "unknown key 'prob'" in capsys.readouterr().err


def test_rerun_needs_overwrite(tmp_path, capsys):
    corpus = write_documents(tmp_path / "docs.txt")
    assert _preprocess(tmp_path, corpus, "mlm")[0] == 0
    assert _preprocess(tmp_path, corpus, "mlm")[0] == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _preprocess(tmp_path, corpus, "mlm", "--overwrite")[0] == 0


def test_inspect_prints_manifest_and_samples(tmp_path, capsys):
    _, out = _preprocess(tmp_path, write_documents(tmp_path / "docs.txt"), "mlm")
    capsys.readouterr()
    assert main(["inspect", str(out), "--samples", "2", "--examples"]) == 0
    text = capsys.readouterr().out
    assert '"name": "mlm"' in text and "--- record 1" in text and "[CLS]" in text and "> mlm_labels" in text
    assert main(["inspect", str(tmp_path)]) == 2


@pytest.mark.parametrize("kind,out_name", [("wordpiece", "vocab.txt"), ("bpe", "tokenizer.json"),
                                           ("sentencepiece", "spm.model")])
def test_build_vocab(tmp_path, kind, out_name, capsys):
    corpus = write_documents(tmp_path / "docs.txt", documents=200)
    out = tmp_path / out_name
    assert main(["build-vocab", "--type", kind, "--corpus", str(corpus), "--vocab-size", "60",
                 "--out", str(out)]) == 0
    assert out.exists() and not list(tmp_path.glob(".*partial*"))
    assert f"({kind})" in capsys.readouterr().out
    if kind == "wordpiece":
        assert out.read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if kind == "bpe":
        assert json.loads(out.read_text())["model"]["type"] == "BPE"
