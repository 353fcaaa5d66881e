"""vit / mae / beit / clip / vilt / s2t: preprocess tiny media corpora into storage, skips recorded,
then load through the loader with the batch keys and shapes of docs/architecture.md."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import modaloom.data.processors.image_text  # noqa: F401  (registers clip / vilt even before the package lists it)
import modaloom.data.processors.speech  # noqa: F401
from modaloom.data.loader import build_loader
from modaloom.data.processors.base import SourceRecord, build_processor
from modaloom.data.processors.vision import image_folder_records
from modaloom.data.storage import DatasetWriter
from modaloom.data.tokenizers import load_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "red", "blue", "cat", "dog",
         "sound", "hello", "world"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with 6 PNGs, a corrupt PNG, 4 wavs, a vocab, and TSV / JSONL lists naming them."""
    root = tmp_path_factory.mktemp("media")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        colour = "red" if i % 2 == 0 else "blue"
        pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 20, size=(40 + i, 48, 3)), 0, 255)
        folder = root / "classes" / colour
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i}.png")
        rows.append((f"classes/{colour}/img{i}.png", i % 2, f"a photo of the {colour} cat"))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines = ["path\tlabel\tcaption", *(f"{p}\t{label}\t{c}" for p, label, c in rows),
             "missing.png\t0\ta cat", "broken.png\t1\ta dog"]
    (root / "images.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    audio_rows = []
    for i in range(4):
        rate = 16000 if i % 2 == 0 else 22050
        t = np.arange(int(rate * (0.5 + 0.25 * i))) / rate
        soundfile.write(root / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)), rate)
        audio_rows.append({"audio": f"clip{i}.wav", "text": "hello world" if i % 2 else "the sound"})
    audio_rows.append({"audio": "nothing.wav", "text": "hello"})
    (root / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    audio_rows.append({"audio": "broken.wav", "text": "hello"})
    (root / "audio.jsonl").write_text("\n".join(json.dumps(r) for r in audio_rows) + "\n", encoding="utf-8")
    return root


def read_rows(path: Path) -> list[SourceRecord]:
    """TSV-with-header or JSONL rows as the preprocess CLI hands them to processors."""
    text = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return [SourceRecord(str(path), n, json.loads(line)) for n, line in enumerate(text, start=1)]
    header = text[0].split("\t")
    return [SourceRecord(str(path), n, dict(zip(header, line.split("\t")))) for n, line in enumerate(text[1:], 2)]


def preprocess(media: Path, out: Path, name: str, records: list[SourceRecord], seq_length: int = 16,
               **options) -> Path:
    tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(media / "vocab.txt")})
    processor = build_processor(name, tokenizer, seq_length, options)
    result = processor.process_chunk(records, 0)
    with DatasetWriter(out, processor.fields) as writer:
        writer.add_batch(result.batch)
        for skip in result.skips:
            writer.skip(skip)
        tokenizer.save(writer.path / "tokenizer")
        writer.close({"processor": processor.manifest_entry()})
    return out


def all_batches(out: Path, batch_size: int = 2, **kwargs) -> list[dict[str, torch.Tensor]]:
    loader = build_loader(out, batch_size=batch_size, seed=3, drop_last=False, **kwargs)
    return list(loader)


def skipped_reasons(out: Path) -> dict[str, int]:
    return json.loads((out / "manifest.json").read_text())["skipped"]["by_reason"]


def test_vit_from_tsv_skips_missing_and_corrupt_images(media: Path, tmp_path: Path) -> None:
    out = preprocess(media, tmp_path / "vit", "vit", read_rows(media / "images.tsv"),
                     image_height=32, image_width=32)
    assert skipped_reasons(out) == {"missing_image": 1, "corrupt_image": 1}
    skips = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skips] == [8, 9] and skips[0]["file"].endswith("images.tsv")
    batches = all_batches(out)
    assert [tuple(b["pixel_values"].shape) for b in batches] == [(2, 3, 32, 32)] * 3
    assert batches[0]["pixel_values"].dtype == torch.float32 and batches[0]["labels"].dtype == torch.long
    assert sorted(torch.cat([b["labels"] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_vit_labels_follow_colour_from_image_folders(media: Path, tmp_path: Path) -> None:
    classes, rows = image_folder_records(media / "classes")
    assert classes == ["blue", "red"]
    out = preprocess(media, tmp_path / "vitf", "vit", list(rows), image_height=16, image_width=16,
                     crop="center", norm="none", label_names=[])
    for batch in all_batches(out):
        red_minus_blue = batch["pixel_values"][:, 0].mean(dim=(1, 2)) - batch["pixel_values"][:, 2].mean(dim=(1, 2))
        expected = batch["labels"] == 1  # "red" is class 1
        assert torch.equal(red_minus_blue > 0, expected)


def test_vit_named_labels_and_unknown_label_skip(media: Path, tmp_path: Path) -> None:
    rows = [SourceRecord("x.tsv", 2, {"path": str(media / "classes/red/img0.png"), "label": "red"}),
            SourceRecord("x.tsv", 3, {"path": str(media / "classes/red/img0.png"), "label": "green"})]
    out = preprocess(media, tmp_path / "named", "vit", rows, label_names=["blue", "red"])
    assert skipped_reasons(out) == {"bad_label": 1}
    assert all_batches(out)[0]["labels"].tolist() == [1]


@pytest.mark.parametrize(("name", "masked"), [("mae", 48), ("beit", None)])
def test_mae_and_beit_patch_masks(media: Path, tmp_path: Path, name: str, masked: int | None) -> None:
    out = preprocess(media, tmp_path / name, name, read_rows(media / "images.tsv"), image_height=64,
                     image_width=64, patch_size=8)
    batches = all_batches(out, batch_size=3)
    for batch in batches:
        assert batch["pixel_values"].shape[1:] == (3, 64, 64)
        assert batch["patch_mask"].shape[1:] == (64,) and batch["patch_mask"].dtype == torch.bool
        counts = batch["patch_mask"].sum(dim=1)
        if masked is not None:
            assert (counts == masked).all()
        else:
            assert ((counts >= 16) & (counts <= round(0.4 * 64))).all()
    # new masks every epoch for the same records
    loader = build_loader(out, batch_size=6, seed=3, shuffle=False)
    first, second = list(loader)[0], list(loader)[0]  # epochs 0 and 1
    assert not torch.equal(first["patch_mask"], second["patch_mask"])


def test_clip_captions_get_cls_and_sep(media: Path, tmp_path: Path) -> None:
    out = preprocess(media, tmp_path / "clip", "clip", read_rows(media / "images.tsv"), image_height=32,
                     image_width=32, seq_length=6)
    batch = all_batches(out, batch_size=6)[0]
    assert batch["pixel_values"].shape == (6, 3, 32, 32)
    ids = batch["input_ids"]
    assert ids.shape == (6, 6) and (ids[:, 0] == 2).all() and (ids[:, -1] == 3).all()  # cut to seq_length
    assert batch["attention_mask"].all()


def test_vilt_masking_and_deterministic_mismatches(media: Path, tmp_path: Path) -> None:
    out = preprocess(media, tmp_path / "vilt", "vilt", read_rows(media / "images.tsv"), image_height=32,
                     image_width=32, mask_prob=0.3)
    serial = all_batches(out, batch_size=3)
    parallel = all_batches(out, batch_size=3, num_workers=2)
    for a, b in zip(serial, parallel):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    itm, masked = [], 0
    for epoch in range(8):
        loader = build_loader(out, batch_size=6, seed=epoch, shuffle=False)
        batch = next(iter(loader))
        itm += batch["itm_labels"].tolist()
        labels = batch["mlm_labels"]
        assert (labels[:, 0] == -100).all()  # [CLS] is never masked
        real = labels != -100
        masked += int(real.sum())
        assert (batch["input_ids"][real] != labels[real]).float().mean() > 0.5 or real.sum() < 4
    assert 0.25 < np.mean(itm) < 0.75 and set(itm) == {0, 1}
    assert masked >= 48  # at least one masked token per caption


def test_vilt_mismatched_image_comes_from_another_record(media: Path, tmp_path: Path) -> None:
    out = preprocess(media, tmp_path / "vilt1", "vilt", read_rows(media / "images.tsv"), image_height=16,
                     image_width=16, crop="center", hflip=False, mismatch_prob=1.0)
    loader = build_loader(out, batch_size=6, seed=0, shuffle=False)
    same = build_loader(out, batch_size=6, seed=0, shuffle=False, option_overrides={"mismatch_prob": 0.0})
    negatives, positives = next(iter(loader)), next(iter(same))
    assert (negatives["itm_labels"] == 0).all() and (positives["itm_labels"] == 1).all()
    diff = (negatives["pixel_values"] - positives["pixel_values"]).abs().flatten(1).max(dim=1).values
    assert (diff > 0).all()


def test_s2t_features_decoder_inputs_and_skips(media: Path, tmp_path: Path) -> None:
    out = preprocess(media, tmp_path / "s2t", "s2t", read_rows(media / "audio.jsonl"))
    assert skipped_reasons(out) == {"missing_audio": 1, "corrupt_audio": 1}
    batches = all_batches(out, batch_size=4, shuffle=False)
    assert len(batches) == 1
    batch = batches[0]
    frames = [48, 73, 98, 123]  # 0.5 / 0.75 / 1.0 / 1.25 s at 10 ms hops, 25 ms windows
    assert batch["input_features"].shape == (4, 123, 80)
    assert batch["feature_mask"].sum(dim=1).tolist() == frames
    assert batch["decoder_input_ids"][:, 0].tolist() == [2, 2, 2, 2]  # [CLS] as bos
    assert batch["decoder_input_ids"][0].tolist() == [2, 8, 13]  # [CLS] the sound
    assert batch["lm_labels"][0].tolist() == [8, 13, 3]  # the sound [SEP]
    assert batch["decoder_attention_mask"].sum(dim=1).tolist() == [3, 3, 3, 3]
    # SpecAugment: features differ between epochs, and are off for evaluation overrides
    loader = build_loader(out, batch_size=4, seed=3, shuffle=False)
    first, second = list(loader)[0], list(loader)[0]  # epochs 0 and 1
    assert not torch.equal(first["input_features"], second["input_features"])
    plain = build_loader(out, batch_size=4, seed=3, shuffle=False, option_overrides={"specaugment": False})
    again = build_loader(out, batch_size=4, seed=4, shuffle=False, option_overrides={"specaugment": False})
    assert torch.equal(next(iter(plain))["input_features"], next(iter(again))["input_features"])


def test_s2t_rejects_plain_text_lines(media: Path) -> None:
    from modaloom.errors import DataError

    tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(media / "vocab.txt")})
    processor = build_processor("s2t", tokenizer, 16)
    with pytest.raises(DataError, match="TSV"):
        processor.process_chunk([SourceRecord("corpus.txt", 1, "hello world")], 0)


def test_image_bytes_are_stored_unchanged(media: Path, tmp_path: Path) -> None:
    from modaloom.data.storage import open_dataset

    out = preprocess(media, tmp_path / "raw", "mae", read_rows(media / "images.tsv")[:1])
    stored = open_dataset(out)[0]["image"]
    assert stored.tobytes() == (media / "classes/red/img0.png").read_bytes()
    assert Image.open(io.BytesIO(stored.tobytes())).size == (48, 40)


def test_clip_counts_cut_captions_in_the_manifest_and_the_summary(media: Path, tmp_path: Path, capsys) -> None:
    from modaloom.cli.main import main

    def run(seq_length: int) -> tuple[dict, str]:
        out = tmp_path / f"clip{seq_length}"
        assert main(["preprocess", "--processor", "clip", "--corpus", str(media / "images.tsv"), "--vocab",
                     str(media / "vocab.txt"), "--out", str(out), "--seq-length", str(seq_length)]) == 0
        return json.loads((out / "manifest.json").read_text())["counts"], capsys.readouterr().out

    # six kept captions of 6 tokens + [CLS] [SEP] > 6; the two skipped rows (short captions) are not counted
    counts, line = run(6)
    assert counts["records"] == 6 and counts["truncated"] == 6
    assert "truncated 6 to seq_length 6; skipped 2" in line
    counts, line = run(16)
    assert counts["truncated"] == 0 and "truncated 0 to seq_length 16" in line
