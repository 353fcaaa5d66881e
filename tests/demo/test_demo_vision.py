"""The vision demo stage end to end in quick mode: on tiny synthetic idx files (CI) and on the real
Fashion-MNIST when Debian's dataset-fashion-mnist is installed; plus its pieces (idx reading, picture maths)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from modaloom.data import fashion_mnist
from modaloom.demo import install, vision
from modaloom.demo.stage import StageContext, StageReport
from modaloom.errors import DataError
from modaloom.targets.mae import patchify

HEADLINE = {"accuracy_pretrained", "accuracy_random_init", "accuracy_gain"}


def synthetic_source(root, train=240, test=80, seed=0):
    """Fashion-MNIST-shaped idx.gz files: 28x28 images whose class is a bright horizontal band's row."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 5 + 2 * label, 4:24] = 230
        names = fashion_mnist.FILES[split]
        fashion_mnist.write_idx(root / names[0], images)
        fashion_mnist.write_idx(root / names[1], labels)
    return root


def check_report(report: StageReport, work) -> None:
    assert set(report.headline) == HEADLINE
    for key in ("accuracy_pretrained", "accuracy_random_init"):
        assert 0.0 <= report.headline[key] <= 1.0
    assert report.headline["accuracy_gain"] == pytest.approx(
        report.headline["accuracy_pretrained"] - report.headline["accuracy_random_init"], abs=1e-3)
    picture = work / "reconstructions.png"
    assert picture.is_file() and 0 < picture.stat().st_size < 300_000
    assert all((work / f.path).is_file() for f in report.figures)
    assert all((work / c).is_file() for c in report.configs.values())
    assert [r["name"] for r in report.runs] == ["mae pre-training", "fine-tune (pretrained)",
                                                "fine-tune (random init)"]
    assert report.tables and report.tables[0].rows and len(report.samples) == vision.SHOWN
    verbs = [c.split()[1] for c in report.commands]
    assert verbs == ["preprocess", "pretrain", "finetune", "finetune", "predict"]


@pytest.mark.timeout(300)
def test_quick_stage_end_to_end_on_synthetic_idx_files(tmp_path, monkeypatch):
    source = synthetic_source(tmp_path / "idx")
    monkeypatch.setattr(vision, "source_folder", lambda: source)
    work = tmp_path / "vision"
    ctx = StageContext(work=work, quick=True, threads=1, log=io.StringIO())
    report = vision.run(ctx)
    check_report(report, work)
    assert report.wall_s > 0
    ready = json.loads((work / "data" / "ready.json").read_text())
    assert ready["counts"]["labelled"] == vision.QUICK.labelled
    # a second run reuses every step: no command runs again
    again = StageContext(work=work, quick=True, threads=1, log=io.StringIO())
    second = vision.run(again)
    assert again.commands == []
    assert second.headline == report.headline


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (fashion_mnist.SOURCE / fashion_mnist.FILES["train"][0]).is_file(),
                    reason="Debian dataset-fashion-mnist is not installed")
def test_quick_stage_on_the_real_fashion_mnist(tmp_path):
    work = tmp_path / "vision"
    report = vision.run(StageContext(work=work, quick=True, threads=1, log=io.StringIO()))
    check_report(report, work)
    first = (work / "data" / "train.tsv").read_text().splitlines()[1]
    assert first.split("\t")[0] in fashion_mnist.CLASSES


def test_missing_dataset_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SOURCE", tmp_path / "absent")
    monkeypatch.setattr(install, "is_root", lambda: False)  # never really run apt-get
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        vision.source_folder()
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fashion_mnist.load_split(tmp_path, "train")


def test_idx_round_trip_and_bad_files(tmp_path):
    import gzip

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    fashion_mnist.write_idx(tmp_path / "x.gz", images)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "x.gz"), images)
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(DataError, match=r"shape \(5,\) \(13 bytes\) but the file holds 11"):
        fashion_mnist.read_idx(tmp_path / "short.gz")
    with gzip.open(tmp_path / "float.gz", "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(DataError, match="unsigned bytes"):
        fashion_mnist.read_idx(tmp_path / "float.gz")


def test_export_split_writes_pngs_and_both_lists(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    assert fashion_mnist.export_split(images, np.array([0, 9, 5]), tmp_path, "dev") == 3
    assert (tmp_path / "dev.tsv").read_text().splitlines() == ["label\tpath", "t-shirt\tdev/0.png",
                                                               "boot\tdev/1.png", "sandal\tdev/2.png"]
    assert (tmp_path / "dev_pairs.tsv").read_text().splitlines()[2] == "a photo of a boot\tdev/1.png"
    assert (tmp_path / "dev" / "2.png").is_file()
    with pytest.raises(DataError, match="label 10"):
        fashion_mnist.export_split(images[:1], np.array([10]), tmp_path, "bad")


@pytest.mark.parametrize("patch", [4, 7])
def test_unpatchify_inverts_patchify(patch):
    pixels = torch.randn(2, 3, 28, 28)
    assert torch.equal(vision.unpatchify(patchify(pixels, patch), patch, 28), pixels)


def test_outputs_of_other_sizes_are_not_reused(tmp_path):
    vision.forget_other_sizes(tmp_path, vision.QUICK)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "summary.json").write_text("{}")
    (tmp_path / "reconstructions.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("mine")
    vision.forget_other_sizes(tmp_path, vision.QUICK)  # same sizes: kept
    assert (tmp_path / "pretrain" / "summary.json").is_file()
    vision.forget_other_sizes(tmp_path, vision.FULL)
    assert not (tmp_path / "pretrain").exists() and not (tmp_path / "reconstructions.png").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "sizes.json").read_text())["unlabelled"] == vision.FULL.unlabelled
