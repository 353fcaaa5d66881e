"""Parquet, `datasets` folders and webdataset shards give the same datasets as text / TSV / JSONL inputs of
the same content (byte-identical shards), count the same bad records, read batch by batch, and resume."""

from __future__ import annotations

import io
import json
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from modaloom.cli.main import main
from modaloom.data import tables
from modaloom.data.config import TokenizerConfig
from modaloom.data.preprocess import preprocess
from modaloom.data.readers import ReaderOptions, guess_format, read_corpus, record_from_object, row_value
from modaloom.data.storage import open_dataset
from modaloom.data.tar_shards import (
    expand_braces,
    expand_corpora,
    open_shard,
    read_tar_shard,
    split_name,
    tar_members,
)
from modaloom.errors import ConfigError, DataError
from tests.data.text_fixtures import sentence, write_documents, write_vocab

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CAPTION_WORDS = ("cat", "dog", "red", "blue", "sun", "tree")


def shard_files(out: Path) -> dict[str, bytes]:
    """Every stored byte of a dataset: each shard's data and offsets files."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("shard-*/*"))}
    assert files
    return files


def counts(out: Path) -> dict:
    """The manifest counts, but blank lines (only text corpora have them)."""
    found = dict(open_dataset(out).manifest["counts"])
    found.pop("blank_lines", None)
    return found


def skip_reasons(out: Path) -> list[tuple[int, str]]:
    return [(row["line"], row["reason"].split(":")[0]) for row in open_dataset(out).skipped()]


def run(tmp_path: Path, processor: str, corpus, name: str, *, fmt: str = "", chunk_records: int = 8,
        reader: ReaderOptions | None = None, options: dict | None = None) -> Path:
    out = tmp_path / name
    tokenizer = TokenizerConfig(type="wordpiece", vocab=str(write_vocab(tmp_path)))
    corpora = corpus if isinstance(corpus, list) else [corpus]
    preprocess(processor, corpora, out, tokenizer=tokenizer, seq_length=32, corpus_format=fmt,
               chunk_records=chunk_records, reader=reader, options=options)
    return out


def write_tar(path: Path, samples: list[dict[str, bytes | str]], mode: str = "w") -> Path:
    """A webdataset shard: each sample's fields as consecutive members ``<key>.<field>``."""
    with tarfile.open(path, mode) as archive:
        for sample in samples:
            for field, value in sample.items():
                if field == "__key__":
                    continue
                data = value.encode("utf-8") if isinstance(value, str) else value
                info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


# ------------------------------------------------------------------- text: every format, the same dataset

def _lines(n: int = 60) -> list[str]:
    return [sentence(i, 3 + i % 7) for i in range(n)]


def test_line_inputs_in_every_format_give_identical_shards(tmp_path):
    datasets = pytest.importorskip("datasets")
    lines = _lines()
    text = tmp_path / "lines.txt"
    text.write_text("\n".join(lines[:30]) + "\n\n" + "\n".join(lines[30:]) + "\n", encoding="utf-8")
    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    parquet = tmp_path / "lines.parquet"
    pq.write_table(pa.table({"id": list(range(len(lines))), "text": lines}), parquet, row_group_size=7)
    folder = tmp_path / "lines_hf"
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(folder))
    shard = write_tar(tmp_path / "lines.tar", [{"__key__": f"{i:05d}", "txt": t} for i, t in enumerate(lines)])

    reference = run(tmp_path, "lm", text, "from_text")
    assert open_dataset(reference).manifest["counts"]["blank_lines"] == 1
    for corpus, name in ((jsonl, "jsonl"), (parquet, "parquet"), (folder, "datasets"), (shard, "webdataset")):
        assert guess_format(corpus, "line") == name
        out = run(tmp_path, "lm", corpus, f"from_{name}")
        assert shard_files(out) == shard_files(reference), name
        assert counts(out) == counts(reference), name


def test_documents_from_parquet_lists_datasets_and_tar_equal_the_text_corpus(tmp_path):
    """bert draws random-next segments from other documents of its chunk: equal chunks give equal pairs."""
    datasets = pytest.importorskip("datasets")
    text = write_documents(tmp_path / "docs.txt", documents=40)
    documents = [block.split("\n") for block in text.read_text(encoding="utf-8").strip().split("\n\n")]
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"sentences": documents}), parquet, row_group_size=5)
    folder = tmp_path / "docs_hf"
    datasets.Dataset.from_dict({"body": ["\n".join(d) for d in documents]}).save_to_disk(str(folder))
    shard = write_tar(tmp_path / "docs.tar", [{"__key__": f"d{i:03d}", "txt": "\n".join(d)}
                                              for i, d in enumerate(documents)])
    reference = run(tmp_path, "bert", text, "from_text")
    for corpus, name, reader in ((parquet, "parquet", None), (folder, "datasets", ReaderOptions("body")),
                                 (shard, "webdataset", None)):
        out = run(tmp_path, "bert", corpus, f"from_{name}", reader=reader)
        assert shard_files(out) == shard_files(reference), name
        assert counts(out) == counts(reference), name


def test_bad_rows_are_counted_as_the_same_jsonl_lines_are(tmp_path):
    rows = [{"text": "the cat sat"}, {"text": None}, {"text": 7}, {"other": "x"}, {"text": "   "},
            {"text": "a dog ran"}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from_jsonl = run(tmp_path, "lm", jsonl, "jsonl")
    assert skip_reasons(from_jsonl) == [(2, "missing_text"), (3, "missing_text"), (4, "missing_text"),
                                        (5, "missing_text")]
    assert "'text' holds int" in next(r["reason"] for r in open_dataset(from_jsonl).skipped() if r["line"] == 3)
    # a Parquet column has one type: nulls stand for the missing and the non-string values
    texts = [r.get("text") if isinstance(r.get("text"), str) else None for r in rows]
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": texts, "number": [len(t or "") for t in texts]}), parquet)
    from_parquet = run(tmp_path, "lm", parquet, "parquet")
    assert skip_reasons(from_parquet) == skip_reasons(from_jsonl)
    assert shard_files(from_parquet) == shard_files(from_jsonl)
    with pytest.raises(DataError, match=r"6 skipped: \{'missing_text': 6\}"):  # text_field naming ints
        run(tmp_path, "lm", parquet, "numbers", reader=ReaderOptions(text_field="number"))
    reasons = [r.reason for r in read_corpus(parquet, "line", options=ReaderOptions(text_field="number"))]
    assert reasons[0] == "missing_text: no 'number' field, 'number' holds int"


# ------------------------------------------------------------------- bounded memory, by construction

def test_parquet_is_read_one_batch_at_a_time(tmp_path, monkeypatch):
    parquet = tmp_path / "many_groups.parquet"
    lines = _lines(500)
    pq.write_table(pa.table({"text": lines}), parquet, row_group_size=10)
    assert pq.ParquetFile(parquet).metadata.num_row_groups == 50

    def refuse(*args, **kwargs):
        raise AssertionError("the whole table was read")

    for name in ("read", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, name, refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    pulled: list[int] = []
    iter_batches = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            pulled.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    monkeypatch.setattr(tables, "BATCH_ROWS", 16)
    records = read_corpus(parquet, "line")
    first = next(records)
    assert first.value == lines[0] and pulled == [16]  # one batch converted, not the file
    rest = list(records)
    assert [r.value for r in rest] == lines[1:]
    assert max(pulled) == 16 and sum(pulled) == 500


def test_datasets_folder_is_streamed_batch_by_batch(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    lines = _lines(300)
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(folder), max_shard_size="4KB")
    assert len(tables.arrow_files(folder)) > 1
    pulled: list[int] = []
    open_stream = pa.ipc.open_stream

    def counting(source, *args, **kwargs):
        reader = open_stream(source, *args, **kwargs)
        for batch in reader:  # the reader's read_all is never used: batches one by one
            pulled.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pa.ipc, "open_stream", counting)
    records = read_corpus(folder, "line")
    assert next(records).value == lines[0] and len(pulled) == 1 and pulled[0] < len(lines)
    assert [r.value for r in records] == lines[1:] and sum(pulled) == len(lines)


# ------------------------------------------------------------------- webdataset: images and audio

def _png(colour: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, size=(12 + seed, 16, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_pairs(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Six PNG files + captions listed in a TSV (with a broken PNG and a missing file), and the samples."""
    samples, lines = [], ["path\tcaption"]
    for i in range(6):
        data = _png((200, 40, 40) if i % 2 else (40, 40, 200), i)
        (tmp_path / f"img{i}.png").write_bytes(data)
        caption = f"a {CAPTION_WORDS[i]} {CAPTION_WORDS[(i + 1) % 6]}"
        lines.append(f"img{i}.png\t{caption}")
        samples.append({"__key__": f"s{i:04d}", "png": data, "txt": caption})
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines.append("broken.png\ta cat")
    samples.append({"__key__": "s0006", "png": b"\x89PNG\r\n\x1a\n broken", "txt": "a cat"})
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tsv, samples


def test_webdataset_image_text_equals_the_tsv_of_the_same_files(tmp_path, image_pairs):
    tsv, samples = image_pairs
    reference = run(tmp_path, "clip", tsv, "from_tsv")
    assert skip_reasons(reference) == [(8, "corrupt_image")]
    shards = [write_tar(tmp_path / "pairs-000.tar", samples[:4]), write_tar(tmp_path / "pairs-001.tar", samples[4:])]
    out = run(tmp_path, "clip", [str(tmp_path / "pairs-{000..001}.tar")], "from_tar")
    assert shard_files(out) == shard_files(reference)
    assert counts(out) == counts(reference)
    assert [(Path(r["file"]).name, r["line"], r["reason"].split(":")[0]) for r in open_dataset(out).skipped()] \
        == [("pairs-001.tar", 3, "corrupt_image")]
    assert [p["path"] for p in open_dataset(out).manifest["inputs"]] == [str(s.resolve()) for s in shards]


def test_webdataset_sample_without_image_or_caption_is_a_counted_skip(tmp_path, image_pairs):
    _, samples = image_pairs
    damaged = [samples[0], {"__key__": "nocap", "png": samples[1]["png"]}, {"__key__": "noimg", "txt": "a cat"},
               {"__key__": "badtxt", "png": samples[2]["png"], "txt": b"\xff\xfe"}, samples[3]]
    out = run(tmp_path, "clip", write_tar(tmp_path / "damaged.tar.gz", damaged, "w:gz"), "damaged")
    assert sorted(skip_reasons(out)) == [(2, "missing_column"), (3, "missing_column"), (4, "not_utf8")]
    assert open_dataset(out).manifest["counts"]["records"] == 2


def test_parquet_and_datasets_image_bytes_equal_the_tsv(tmp_path, image_pairs):
    datasets = pytest.importorskip("datasets")
    tsv, samples = image_pairs
    reference = run(tmp_path, "clip", tsv, "from_tsv")
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"jpg": [s["png"] for s in samples], "caption": [s["txt"] for s in samples]}), parquet)
    out = run(tmp_path, "clip", parquet, "from_parquet", options={"image_column": "jpg"})
    assert shard_files(out) == shard_files(reference) and counts(out) == counts(reference)
    folder = tmp_path / "pairs_hf"
    table = datasets.Dataset.from_dict({"image": [{"bytes": s["png"], "path": None} for s in samples],
                                        "text": [s["txt"] for s in samples]})
    table.cast_column("image", datasets.Image()).save_to_disk(str(folder))
    out = run(tmp_path, "clip", folder, "from_datasets")
    assert shard_files(out) == shard_files(reference) and counts(out) == counts(reference)
    assert skip_reasons(out) == [(7, "corrupt_image")]


def test_webdataset_audio_text_equals_the_jsonl_of_the_same_files(tmp_path):
    rows, samples = [], []
    for i in range(4):
        rate, suffix = (16000, "wav") if i % 2 == 0 else (22050, "flac")
        t = np.arange(int(rate * (0.3 + 0.1 * i))) / rate
        path = tmp_path / f"clip{i}.{suffix}"
        soundfile.write(path, 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), rate)
        text = "the cat" if i % 2 else "a red dog"
        rows.append({"audio": path.name, "text": text})
        samples.append({"__key__": f"u{i}", suffix: path.read_bytes(), "txt": text})
    (tmp_path / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    rows.append({"audio": "broken.wav", "text": "the sun"})
    samples.append({"__key__": "u4", "wav": b"RIFF1234WAVEjunk", "txt": "the sun"})
    jsonl = tmp_path / "audio.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    reference = run(tmp_path, "s2t", jsonl, "from_jsonl")
    out = run(tmp_path, "s2t", write_tar(tmp_path / "audio.tar", samples), "from_tar")
    assert shard_files(out) == shard_files(reference) and counts(out) == counts(reference)
    assert skip_reasons(out) == skip_reasons(reference) == [(5, "corrupt_audio")]


def test_a_truncated_shard_keeps_its_complete_samples_and_records_one_skip(tmp_path):
    lines = _lines(20)
    whole = write_tar(tmp_path / "whole.tar", [{"__key__": f"{i:03d}", "txt": t} for i, t in enumerate(lines)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:512 * 21 + 100])  # ten samples (header + data block each) and a bit
    items = list(read_tar_shard(cut, "line"))
    assert [r.value for r in items[:-1]] == lines[:len(items) - 1] and len(items) - 1 >= 9
    assert items[-1].reason.startswith("bad_tar:")
    damaged = bytearray(whole.read_bytes())
    damaged[512 * 10 + 5] ^= 0xFF  # the sixth sample's header: the fifth, not known to be whole, goes too
    cut.write_bytes(bytes(damaged))
    items = list(read_tar_shard(cut, "line"))
    assert len(items) == 5 and items[-1].line == 5 and "after 4 complete samples (a header's checksum" in items[-1].reason
    (tmp_path / "not.tar").write_bytes(b"plain text, not a tar" * 40)
    with pytest.raises(DataError, match="not a tar file"):
        list(read_tar_shard(tmp_path / "not.tar", "line"))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_tar_members_match_tarfile_for_every_header_format(tmp_path, fmt, compression):
    """Long and non-ASCII names (GNU 'L' and pax 'x' headers, ustar prefixes), folders and links passed over."""
    folder = "d/" + "deep-folder-name/" * 5  # > 100 characters with the file name: a prefix or long name
    names = [f"{folder}000001.jpg", f"{folder}000001.txt", "café/000002.txt", "000003.bin", "empty.txt"]
    if fmt == tarfile.USTAR_FORMAT:
        names[2] = "cafe/000002.txt"  # ustar cannot hold non-ASCII names
    path = tmp_path / f"members.tar{'.' + compression if compression else ''}"
    with tarfile.open(path, f"w:{compression}", format=fmt) as archive:
        folder_info = tarfile.TarInfo("d")
        folder_info.type = tarfile.DIRTYPE
        archive.addfile(folder_info)
        for i, name in enumerate(names):
            data = bytes(range(256)) * (i * 3) if i != 4 else b""
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "empty.txt"
        archive.addfile(link)
    with tarfile.open(path) as archive:
        expected = [(m.name, archive.extractfile(m).read()) for m in archive if m.isfile()]
    with open_shard(path) as handle:
        assert list(tar_members(handle)) == expected


# ------------------------------------------------------------------- names, options and errors

def test_brace_patterns_and_sample_keys():
    assert expand_braces("s-{008..011}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar", "s-011.tar"]
    assert expand_braces("{train,val}-{1..2}.tar") == ["train-1.tar", "train-2.tar", "val-1.tar", "val-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(DataError, match="neither a range"):
        expand_braces("s-{x}.tar")
    assert split_name("a/b/000123.Caption.TXT") == ("a/b/000123", "caption.txt")
    assert split_name("000123.jpg") == ("000123", "jpg")


def test_a_pattern_naming_missing_shards_is_an_error(tmp_path):
    write_tar(tmp_path / "s-000.tar", [{"__key__": "a", "txt": "the cat"}])
    with pytest.raises(DataError, match=r"1 do not exist, e.g. .*s-001.tar"):
        expand_corpora([str(tmp_path / "s-{000..001}.tar")])


def test_dataset_dict_split_is_chosen_by_option(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "dict"
    train, test = _lines(30), _lines(40)[30:]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": train}),
                          "test": datasets.Dataset.from_dict({"text": test})}).save_to_disk(str(folder))
    vocab = write_vocab(tmp_path)
    base = ["preprocess", "--processor", "lm", "--corpus", str(folder), "--vocab", str(vocab), "--seq-length", "32"]
    assert main([*base, "--out", str(tmp_path / "none")]) == 2
    assert "splits train, test: choose one with --split" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "bad"), "--split", "dev"]) == 2
    assert "no split 'dev'; valid splits: train, test" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "test"), "--split", "test"]) == 0
    text = tmp_path / "test.txt"
    text.write_text("\n".join(test) + "\n", encoding="utf-8")
    reference = run(tmp_path, "lm", text, "reference", chunk_records=1024)
    assert shard_files(tmp_path / "test") == shard_files(reference)


def test_reader_options_that_do_not_apply_are_errors(tmp_path, capsys):
    text = write_documents(tmp_path / "docs.txt")
    with pytest.raises(DataError, match="--text-field names a field"):
        list(read_corpus(text, "document", options=ReaderOptions(text_field="body")))
    with pytest.raises(DataError, match="--split chooses a split"):
        list(read_corpus(text, "document", options=ReaderOptions(split="train")))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("path\tcaption\nx.png\ta cat\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="--option text_column=caption"):
        run(tmp_path, "clip", tsv, "clip", reader=ReaderOptions(text_field="caption"))
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read Parquet file"):
        list(read_corpus(parquet, "line"))


def test_row_values_as_row_processors_see_them():
    assert row_value(None) is None and row_value("x") == "x" and row_value(b"\x89PNG") == b"\x89PNG"
    assert row_value(3) == "3" and row_value(2.5) == "2.5" and row_value(["a", 1]) == '["a", 1]'
    assert row_value({"bytes": b"RIFF", "path": "a.wav"}) == b"RIFF"  # a `datasets` Image / Audio value
    assert row_value({"bytes": None, "path": "a.png"}) == "a.png"
    assert row_value({"label": 1}) == '{"label": 1}'
    record = record_from_object("f.jsonl", 1, {"caption": None, "n": 1}, "row")
    assert record.value == {"caption": None, "n": "1"}  # null is missing (a JSONL null used to be "None")


def test_cli_format_and_text_field_options(tmp_path):
    lines = _lines(40)
    data = tmp_path / "export.bin"
    pq.write_table(pa.table({"body": lines}), data)
    text = tmp_path / "lines.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = write_vocab(tmp_path)
    out = tmp_path / "from_cli"
    assert main(["preprocess", "--processor", "lm", "--corpus", str(data), "--format", "parquet", "--text-field",
                 "body", "--vocab", str(vocab), "--out", str(out), "--seq-length", "32"]) == 0
    assert shard_files(out) == shard_files(run(tmp_path, "lm", text, "reference", chunk_records=1024))


# ------------------------------------------------------------------- resume

@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_killed_preprocess_of_parquet_or_shards_resumes_to_the_same_dataset(tmp_path, kind):
    from tests.data.test_bad_input_cli import _records, _run_driver

    text = write_documents(tmp_path / "docs.txt", documents=120)
    documents = [block.split("\n") for block in text.read_text(encoding="utf-8").strip().split("\n\n")]
    if kind == "parquet":
        corpus = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"sentences": documents}), corpus, row_group_size=16)
    else:
        for part in range(3):
            write_tar(tmp_path / f"docs-{part}.tar", [{"__key__": f"d{i:03d}", "txt": "\n".join(documents[i])}
                                                      for i in range(part * 40, part * 40 + 40)])
        corpus = tmp_path / "docs-{0..2}.tar"
    vocab = write_vocab(tmp_path)
    reference = tmp_path / "reference"
    assert _run_driver(tmp_path, -1, text, vocab, reference).returncode == 0
    out = tmp_path / "ds"
    killed = _run_driver(tmp_path, 4, corpus, vocab, out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run_driver(tmp_path, -1, corpus, vocab, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: reused 4 complete shard(s)" in resumed.stdout
    assert _records(out) == _records(reference)
    assert counts(out) == counts(reference)
