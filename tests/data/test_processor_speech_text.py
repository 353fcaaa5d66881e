"""The ``speech_text`` processor: audio + caption pairs for a dual model's speech and text streams, from the
layouts the ``clip`` processor reads (TSV, JSONL, Parquet bytes, webdataset shards), with S2T's features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from modaloom.data.audio import AudioFeatures
from modaloom.data.config import TokenizerConfig
from modaloom.data.loader import build_loader
from modaloom.data.preprocess import preprocess
from modaloom.data.processors.base import SourceRecord, build_processor
from modaloom.data.storage import open_dataset
from modaloom.data.tokenizers import load_tokenizer
from modaloom.errors import ConfigError, DataError
from tests.data.test_formats import shard_files, write_tar

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "low", "high", "tone", "noise", "burst", "the"]
CAPTIONS = ["a low tone", "a high tone", "a noise burst", "the low tone a noise burst"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four clips (wav 16 kHz, flac 22.05 kHz, ogg, wav) with captions, a broken, a missing and a too short
    clip, and an empty caption, listed as JSONL and as TSV (``text path``)."""
    root = tmp_path_factory.mktemp("speech_text")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    rows = []
    for i, (suffix, rate) in enumerate([("wav", 16000), ("flac", 22050), ("ogg", 16000), ("wav", 8000)]):
        t = np.arange(int(rate * (0.3 + 0.1 * i))) / rate
        wave = rng.normal(0, 0.2, t.shape) if i == 2 else 0.4 * np.sin(2 * np.pi * (300 + 500 * (i % 2)) * t)
        soundfile.write(root / f"clip{i}.{suffix}", wave, rate)
        rows.append({"audio": f"clip{i}.{suffix}", "text": CAPTIONS[i]})
    (root / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    soundfile.write(root / "short.wav", np.zeros(200), 16000)  # 12.5 ms: less than 3 frames
    rows += [{"audio": "broken.wav", "text": "a tone"}, {"audio": "nowhere.wav", "text": "a tone"},
             {"audio": "short.wav", "text": "a tone"}, {"audio": "clip0.wav", "text": "   "}]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tsv = ["text\tpath", *(f"{r['text']}\t{r['audio']}" for r in rows)]
    (root / "pairs.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")
    return root


def run(pairs: Path, corpus: Path | str, out: Path, **options) -> Path:
    tokenizer = TokenizerConfig(type="wordpiece", vocab=str(pairs / "vocab.txt"))
    preprocess("speech_text", [corpus], out, tokenizer=tokenizer, seq_length=6, options=options)
    return out


def skips(out: Path) -> list[tuple[str, int, str]]:
    return [(Path(row["file"]).name, row["line"], row["reason"].split(":")[0]) for row in open_dataset(out).skipped()]


def test_pairs_become_filterbanks_and_captions_with_bad_rows_skipped_by_file_and_line(pairs, tmp_path):
    out = run(pairs, pairs / "pairs.jsonl", tmp_path / "jsonl")
    assert skips(out) == [("pairs.jsonl", 5, "corrupt_audio"), ("pairs.jsonl", 6, "missing_audio"),
                          ("pairs.jsonl", 7, "too_short"), ("pairs.jsonl", 8, "missing_column")]
    batch = next(iter(build_loader(out, batch_size=4, seed=3, shuffle=False, drop_last=False)))
    assert set(batch) == {"input_features", "feature_mask", "input_ids", "attention_mask"}
    # S2T's features: resampled to 16 kHz, 80 Kaldi filterbanks every 10 ms, utterance-normalised
    expected = AudioFeatures()((pairs / "clip1.flac").read_bytes())
    frames = batch["feature_mask"].sum(1).tolist()
    assert frames == [28, 38, 48, 58] and batch["input_features"].shape == (4, 58, 80)
    assert torch.allclose(batch["input_features"][1, :frames[1]], torch.from_numpy(expected), atol=1e-5)
    # captions as the clip processor makes them: [CLS] ids [SEP], cut to seq_length (6)
    assert batch["input_ids"][0].tolist() == [2, 5, 6, 8, 3, 0]  # [CLS] a low tone [SEP] [PAD]
    assert batch["input_ids"][3].tolist() == [2, 11, 6, 8, 5, 3]  # "the low tone a noise burst", cut


def test_tsv_parquet_and_webdataset_layouts_store_the_same_pairs(pairs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    reference = run(pairs, pairs / "pairs.jsonl", tmp_path / "jsonl")
    tsv = run(pairs, pairs / "pairs.tsv", tmp_path / "tsv")
    assert shard_files(tsv) == shard_files(reference)
    assert [line for _, line, _ in skips(tsv)] == [6, 7, 8, 9]  # the header is line 1
    good = [(f"clip{i}.{s}", CAPTIONS[i]) for i, s in enumerate(["wav", "flac", "ogg", "wav"])]
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"flac": [(pairs / name).read_bytes() for name, _ in good],
                             "caption": [text for _, text in good]}), parquet)
    assert shard_files(run(pairs, parquet, tmp_path / "parquet", audio_column="flac")) == shard_files(reference)
    samples = [{"__key__": f"u{i}", name.split(".")[1]: (pairs / name).read_bytes(), "txt": text}
               for i, (name, text) in enumerate(good)]
    shard = write_tar(tmp_path / "pairs.tar", samples + [{"__key__": "u9", "wav": b"RIFF1234WAVEjunk", "txt": "a"}])
    from_tar = run(pairs, shard, tmp_path / "tar")
    assert shard_files(from_tar) == shard_files(reference)
    assert skips(from_tar) == [("pairs.tar", 5, "corrupt_audio")]


def test_plain_text_lines_and_unknown_options_are_errors_naming_what_to_fix(pairs):
    tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(pairs / "vocab.txt")})
    processor = build_processor("speech_text", tokenizer, 8)
    with pytest.raises(DataError, match=r"corpus.txt:3: processor 'speech_text' reads TSV"):
        processor.process_chunk([SourceRecord("corpus.txt", 3, "a low tone")], 0)
    with pytest.raises(ConfigError, match="image_column"):
        build_processor("speech_text", tokenizer, 8, {"image_column": "jpg"})


def test_specaugment_is_off_by_default_and_s2t_policy_when_on(pairs, tmp_path):
    out = run(pairs, pairs / "pairs.jsonl", tmp_path / "plain")
    epochs = build_loader(out, batch_size=4, seed=3, shuffle=False)
    first, second = list(epochs)[0], list(epochs)[0]
    assert torch.equal(first["input_features"], second["input_features"])
    masked = build_loader(out, batch_size=4, seed=3, shuffle=False, option_overrides={"specaugment": True})
    assert not torch.equal(next(iter(masked))["input_features"], first["input_features"])


def test_cut_captions_of_kept_pairs_are_counted_in_the_manifest(pairs, tmp_path):
    out = run(pairs, pairs / "pairs.jsonl", tmp_path / "jsonl")
    assert open_dataset(out).manifest["counts"]["truncated"] == 1  # "the low tone a noise burst" (6 + 2 > 6)
    rows = [{"audio": str(pairs / "broken.wav"), "text": CAPTIONS[3]},  # skipped: its cut caption is not counted
            {"audio": str(pairs / "clip1.flac"), "text": CAPTIONS[3]}, {"audio": str(pairs / "clip0.wav"),
                                                                       "text": CAPTIONS[0]}]
    corpus = tmp_path / "long.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts = open_dataset(run(pairs, corpus, tmp_path / "long")).manifest["counts"]
    assert counts["records"] == 2 and counts["truncated"] == 1
