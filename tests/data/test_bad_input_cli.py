"""Issue 9, data side: bad input through the CLI loses nothing and mixes nothing up.

Each test repeats a probe that once deleted a folder, trained on a truncated shard, hid skip counts or
accepted a bad argument, and checks the refusal names what is wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modaloom.cli.main import main
from modaloom.data.storage import open_dataset
from modaloom.data.tokenizers import VocabularyWarning
from modaloom.errors import DataError, ModaloomError
from modaloom.outputs import check_output_dir
from tests.child_env import child_env
from tests.data.text_fixtures import write_documents, write_vocab

ROOT = Path(__file__).resolve().parents[2]


def _preprocess(corpus, vocab, out, *extra, processor="mlm"):
    return main(["preprocess", "--processor", processor, "--corpus", str(corpus), "--vocab", str(vocab),
                 "--out", str(out), "--seq-length", "32", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------ 1. --overwrite replaces only datasets


def test_overwrite_never_replaces_the_folder_holding_the_inputs(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    vocab = write_vocab(inputs)
    corpus = write_documents(inputs / "docs.txt")
    before = _snapshot(inputs)
    assert _preprocess(corpus, vocab, inputs, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"output {inputs} contains the input" in err and "would destroy the input" in err
    assert _snapshot(inputs) == before
    # the vocabulary alone is enough: a folder holding any input is never replaced
    corpus_elsewhere = write_documents(tmp_path / "docs.txt")
    assert _preprocess(corpus_elsewhere, vocab, inputs, "--overwrite") == 2
    assert "contains the input" in capsys.readouterr().err and _snapshot(inputs) == before


def test_overwrite_refuses_a_folder_that_is_not_a_dataset_and_does_not_suggest_overwrite(tmp_path, capsys):
    vocab, corpus = write_vocab(tmp_path), write_documents(tmp_path / "docs.txt")
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "sub" / "thesis.tex").write_text("years of work", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        assert _preprocess(corpus, vocab, notes, *extra) == 2
        err = capsys.readouterr().err
        assert f"output {notes} is a non-empty folder that is not a dataset folder (it lacks manifest.json)" in err
        assert "--overwrite" not in err
    assert (notes / "sub" / "thesis.tex").read_text(encoding="utf-8") == "years of work"
    assert not list(tmp_path.glob(".notes*"))


def test_overwrite_replaces_a_dataset_or_an_empty_folder(tmp_path, capsys):
    vocab, corpus = write_vocab(tmp_path), write_documents(tmp_path / "docs.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _preprocess(corpus, vocab, empty) == 0
    assert _preprocess(corpus, vocab, empty) == 2
    assert "already holds a dataset; pass --overwrite" in capsys.readouterr().err
    assert _preprocess(corpus, vocab, empty, "--overwrite") == 0
    assert len(open_dataset(empty)) > 0


def test_check_output_dir_rule_for_other_commands(tmp_path):
    def check(out, inputs, overwrite=True):
        return check_output_dir(out, kind="model", markers=["config.json"], inputs=inputs, overwrite=overwrite)

    model = tmp_path / "model"
    model.mkdir()
    check(model, [])  # empty: fine
    (model / "config.json").write_text("{}")
    check(model, [tmp_path / "elsewhere.bin"])
    with pytest.raises(ModaloomError, match="already holds a model; pass --overwrite"):
        check(model, [], overwrite=False)
    (model / "weights.bin").write_bytes(b"w")
    with pytest.raises(ModaloomError, match=f"output {model} contains the input"):
        check(model, [model / "weights.bin"])
    with pytest.raises(ModaloomError, match=f"output {model} is the input"):
        check(model, [model])
    link = tmp_path / "link"
    link.symlink_to(model)  # the same folder under another name is still the input's folder
    with pytest.raises(ModaloomError, match="contains the input"):
        check(link, [model / "weights.bin"])
    with pytest.raises(ModaloomError, match="exists and is not a folder"):
        check(model / "weights.bin", [])
    (model / "config.json").unlink()
    with pytest.raises(ModaloomError, match="not a model folder") as refused:
        check(model, [], overwrite=False)
    assert "--overwrite" not in str(refused.value)  # it would not help

def test_truncated_shard_is_refused_by_inspect_and_by_loading(tmp_path, capsys):
    vocab, corpus = write_vocab(tmp_path), write_documents(tmp_path / "docs.txt", documents=60)
    out = tmp_path / "ds"
    assert _preprocess(corpus, vocab, out, processor="bert") == 0
    data = out / "shard-00000" / "input_ids.data"
    size = data.stat().st_size
    cut = (size // 3) & ~1  # an even size, as the probe did: every value still reads as a whole token
    data.write_bytes(data.read_bytes()[:cut])
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data} is {cut} bytes, expected {size}" in err
    with pytest.raises(DataError, match="input_ids.data is"):
        open_dataset(out)


def test_pretrain_refuses_a_truncated_shard(tmp_path, capsys):
    from tests.train.data_helpers import tiny_bert_config, write_dataset

    data = write_dataset(tmp_path / "data")
    shard = data / "shard-00000" / "input_ids.data"
    shard.write_bytes(shard.read_bytes()[:(shard.stat().st_size // 3) & ~1])
    code = main(["pretrain", "--config", str(tiny_bert_config(tmp_path / "c.yaml")), "--data", str(data),
                 "--out", str(tmp_path / "out"), "--steps", "2"])
    assert code == 2 and f"{shard} is" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model").exists()


# ------------------------------------------------------------ 4. the summary line


def test_summary_prints_skips_by_reason(tmp_path, capsys):
    corpus = tmp_path / "mixed.txt"
    corpus.write_bytes(b"the cat sat .\n\xff\xfe\x00 binary\nred sun .\n\x80\x81\n\n")
    capsys.readouterr()
    assert _preprocess(corpus, write_vocab(tmp_path), tmp_path / "ds") == 0
    line = capsys.readouterr().out
    assert "skipped 2 (not_utf8 2;" in line and "skipped.jsonl" in line and "{}" not in line
    assert _preprocess(write_documents(tmp_path / "docs.txt"), write_vocab(tmp_path), tmp_path / "ds2") == 0
    assert capsys.readouterr().out.rstrip().endswith("skipped 0")


# ------------------------------------------------------------ 5. small argument checks


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_workers_below_one_are_refused(tmp_path, capsys, workers):
    out = tmp_path / "ds"
    assert _preprocess(write_documents(tmp_path / "d.txt"), write_vocab(tmp_path), out, "--workers", workers) == 2
    assert f"--workers must be at least 1, got {workers}" in capsys.readouterr().err
    assert not out.exists()


def test_special_token_without_equals_is_refused(tmp_path, capsys):
    out = tmp_path / "ds"
    vocab, corpus = write_vocab(tmp_path), write_documents(tmp_path / "d.txt")
    assert _preprocess(corpus, vocab, out, "--special-token", "mask") == 2
    assert "--special-token 'mask': expected ROLE=TOKEN" in capsys.readouterr().err
    assert _preprocess(corpus, vocab, out, "--special-token", "mask=") == 2
    assert not out.exists()
    assert _preprocess(corpus, vocab, out, "--special-token", "mask=[MASK]") == 0


def test_duplicate_vocabulary_lines_warn_with_line_numbers(tmp_path):
    vocab = write_vocab(tmp_path, extra=("cat", "dog"))
    lines = vocab.read_text(encoding="utf-8").splitlines()
    with pytest.warns(VocabularyWarning) as caught:
        assert _preprocess(write_documents(tmp_path / "d.txt"), vocab, tmp_path / "ds") == 0
    message = str(caught[0].message)
    assert f"'cat' on lines {lines.index('cat') + 1}, {len(lines) - 1}" in message
    assert f"'dog' on lines {lines.index('dog') + 1}, {len(lines)}" in message
    assert "2 id(s)" in message


def test_build_vocab_refuses_an_empty_corpus(tmp_path, capsys):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n  \n\n", encoding="utf-8")
    out = tmp_path / "vocab.txt"
    assert main(["build-vocab", "--type", "wordpiece", "--corpus", str(corpus), "--vocab-size", "50",
                 "--out", str(out)]) == 2
    assert "no text to learn a vocabulary from" in capsys.readouterr().err
    assert not out.exists()


def test_build_vocab_into_a_directory_is_a_one_line_error_leaving_nothing(tmp_path, capsys):
    corpus = write_documents(tmp_path / "d.txt")
    out = tmp_path / "vocabs"
    out.mkdir()
    assert main(["build-vocab", "--type", "wordpiece", "--corpus", str(corpus), "--vocab-size", "50",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} is a directory" in err and "Traceback" not in err
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "vocabs"]
    assert main(["build-vocab", "--type", "wordpiece", "--corpus", str(corpus), "--vocab-size", "50",
                 "--out", str(corpus)]) == 2
    assert "is one of the corpora" in capsys.readouterr().err


# ------------------------------------------------------------ 6. an interrupted preprocess resumes

# Runs the real CLI in a child process with small chunks (so many shards exist) and SIGKILLs itself
# right after the first batch of shard KILL_AT is written: shards before it are complete, it is not.
DRIVER = """
import os, signal, sys
import modaloom.data.preprocess as pp
import modaloom.data.storage as st
pp.preprocess.__kwdefaults__["chunk_records"] = 8
kill_at = int(sys.argv[1])
write = st._ShardWriter.write
def killing_write(self, packed, count):
    write(self, packed, count)
    for handle in self.files.values():
        handle.flush()
    if self.directory.name == f"shard-{kill_at:05d}":
        os.kill(os.getpid(), signal.SIGKILL)
st._ShardWriter.write = killing_write
from modaloom.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _run_driver(tmp_path, kill_at, corpus, vocab, out, *extra):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = child_env(threads=None)
    args = [sys.executable, str(driver), str(kill_at), "preprocess", "--processor", "bert", "--corpus",
            str(corpus), "--vocab", str(vocab), "--out", str(out), "--seq-length", "32", "--shard-mb", "0.0005",
            *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _records(out):
    ds = open_dataset(out)
    return [{k: np.asarray(v).tolist() for k, v in ds[i].items()} for i in range(len(ds))]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_killed_preprocess_resumes_from_complete_shards(tmp_path, workers):
    corpus = tmp_path / "docs.txt"
    write_documents(corpus, documents=120)
    with open(corpus, "ab") as handle:  # skips before and after the kill point must each be kept once
        handle.write(b"\xff broken\n\n" + corpus.read_bytes() + b"\xfe broken too\n")
    vocab = write_vocab(tmp_path)
    reference = tmp_path / "reference"
    done = _run_driver(tmp_path, -1, corpus, vocab, reference)
    assert done.returncode == 0, done.stderr
    assert len(open_dataset(reference).manifest["shards"]) > 6

    out = tmp_path / "ds"
    killed = _run_driver(tmp_path, 4, corpus, vocab, out, "--workers", workers)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = tmp_path / ".ds.partial"
    assert not out.exists() and (partial / "progress.json").exists() and (partial / "shard-00004").is_dir()
    kept = {name: os.stat(partial / "shard-00001" / name).st_ino for name in ("input_ids.data", "sp_label.data")}

    resumed = _run_driver(tmp_path, -1, corpus, vocab, out, "--workers", workers)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: reused 4 complete shard(s)" in resumed.stdout
    assert {name: os.stat(out / "shard-00001" / name).st_ino for name in kept} == kept  # not rewritten
    assert not partial.exists() and not (out / "progress.json").exists()
    expected, got = open_dataset(reference), open_dataset(out)
    assert got.manifest["resumed"]["shards"] == 4
    assert _records(out) == _records(reference)
    assert got.manifest["counts"] == expected.manifest["counts"]
    assert got.manifest["skipped"] == expected.manifest["skipped"]
    assert [s["records"] for s in got.manifest["shards"]] == [s["records"] for s in expected.manifest["shards"]]
    assert list(got.skipped()) == list(expected.skipped()) and len(list(got.skipped())) == 2


def test_a_partial_run_with_other_options_is_not_reused(tmp_path):
    corpus, vocab = write_documents(tmp_path / "docs.txt", documents=120), write_vocab(tmp_path)
    out = tmp_path / "ds"
    assert _run_driver(tmp_path, 3, corpus, vocab, out).returncode == -signal.SIGKILL
    done = _run_driver(tmp_path, -1, corpus, vocab, out, "--seed", "8")
    assert done.returncode == 0, done.stderr
    assert "resumed" not in done.stdout and "resumed" not in json.loads((out / "manifest.json").read_text())
    reference = tmp_path / "reference"
    assert _run_driver(tmp_path, -1, corpus, vocab, reference, "--seed", "8").returncode == 0
    assert _records(out) == _records(reference)


def test_a_partial_folder_holding_other_files_is_not_deleted(tmp_path, capsys):
    corpus, vocab = write_documents(tmp_path / "docs.txt"), write_vocab(tmp_path)
    partial = tmp_path / ".ds.partial"
    partial.mkdir()
    (partial / "thesis.tex").write_text("mine")
    assert _preprocess(corpus, vocab, tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert "holds other files (thesis.tex)" in err and "left alone" in err
    assert (partial / "thesis.tex").read_text() == "mine"
