"""The vision-language demo stage: captions, idx reading, recall ceilings, and the stage end to end in quick mode
on tiny synthetic images (Fashion-MNIST itself only where the Debian package is installed)."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from modaloom.data import fashion_mnist
from modaloom.demo import install
from modaloom.demo import vision_language as vl
from modaloom.demo.stage import StageContext, StageReport, command_json
from modaloom.errors import DataError


def synthetic_splits(sizes):
    """Ten classes of 28x28 images told apart by which quadrants are bright (plus noise), like the real ones."""
    rng = np.random.default_rng(0)

    def split(count):
        labels = np.arange(count) % 10
        images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels, strict=True):
            bits = label + 1  # 1..10: a non-empty set of the four quadrants
            for q in range(4):
                if bits >> q & 1:
                    r, c = divmod(q, 2)
                    image[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] += 200
        return images, labels

    return {"train": split(sizes.train), "dev": split(sizes.dev), "test": split(sizes.test)}


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


# ---------------------------------------------------------------- units


def test_captions_are_varied_name_their_class_and_follow_the_seed():
    first = [vl.caption(7, np.random.default_rng(3)) for _ in range(1)]
    rng = np.random.default_rng(3)
    many = [vl.caption(7, rng) for _ in range(60)]
    assert many[0] == first[0]
    assert len(set(many)) >= 10
    assert all(any(name in text for name in vl.NAMES["sneaker"]) for text in many)
    # every class has names, and the zero-shot name of a class is among its caption names
    assert set(vl.NAMES) == set(vl.CLASSES)
    assert all(any(cls in name for name in vl.NAMES[cls]) for cls in vl.CLASSES)


def test_missing_data_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(vl, "SOURCE", tmp_path / "absent")
    monkeypatch.setattr(install, "is_root", lambda: False)  # never really run apt-get
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        vl.fashion_mnist_splits(vl.QUICK)


def test_class_ceiling_and_top_retrievals(tmp_path):
    # two classes of 2 and 1 items: knowing the class, R@1 is 1/2 for the first two items and 1 for the third
    assert vl.class_ceiling([0, 0, 1], 1) == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert vl.class_ceiling([0, 0, 1], 5) == 1.0
    pool = 6
    ranks = [[3, 1, 6, 2, 5, 4]] * len(vl.GRID_CAPTIONS)
    lines = [json.dumps({"score": 0.0, "image_rank": r, "text_rank": 1}) for row in ranks for r in row]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    assert vl.top_retrievals(tmp_path / "p.jsonl", pool)[0] == [1, 3, 0, 5, 4]
    with pytest.raises(DataError, match="expected"):
        vl.top_retrievals(tmp_path / "p.jsonl", pool + 1)


def test_write_data_lists_every_step_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(vl, "fashion_mnist_splits", synthetic_splits)
    manifest = vl.write_data(tmp_path, vl.QUICK)
    assert manifest["counts"] == {"train": vl.QUICK.train, "dev": vl.QUICK.dev, "test": vl.QUICK.test}
    pairs = (tmp_path / "test_pairs.tsv").read_text().splitlines()
    assert pairs[0] == "text\tpath" and len(pairs) == 1 + vl.QUICK.pairs
    labelled = (tmp_path / "test.tsv").read_text().splitlines()
    assert labelled[1] == f"{vl.CLASSES[0]}\ttest/0.png" and len(labelled) == 1 + vl.QUICK.test
    grid = (tmp_path / "grid_pairs.tsv").read_text().splitlines()
    assert len(grid) == 1 + len(vl.GRID_CAPTIONS) * vl.QUICK.pool
    with Image.open(tmp_path / "train" / "3.png") as image:
        assert image.size == (28, 28)
    # a complete folder is not written again
    monkeypatch.setattr(vl, "fashion_mnist_splits", lambda sizes: pytest.fail("data written twice"))
    assert vl.write_data(tmp_path, vl.QUICK)["counts"] == manifest["counts"]


def test_write_data_with_attributes_names_each_images_tone_and_size(tmp_path, monkeypatch):
    monkeypatch.setattr(vl, "fashion_mnist_splits", synthetic_splits)
    plain = vl.write_data(tmp_path / "plain", vl.QUICK)
    manifest = vl.write_data(tmp_path / "attr", vl.QUICK, attributes=True)
    assert manifest["attributes"] and not plain["attributes"] and "words" not in plain
    words = manifest["words"]["train"]
    assert len(words) == vl.QUICK.train and {w[0] for w in words} == {"light", "medium", "dark"}
    captions = (tmp_path / "attr" / "captions.txt").read_text().splitlines()
    before = (tmp_path / "plain" / "captions.txt").read_text().splitlines()
    for text, old, (tone, size) in zip(captions, before, words, strict=True):
        assert f"{tone}, {size} " in text  # the same template and name, the image's words before the name
        assert text.replace(f"{tone}, {size} ", "") in (old, old.replace("an ", "a "))  # "a light, slim open shoe"
    keys = vl.caption_keys(manifest, "test", manifest["pairs"])
    assert keys[0] == (manifest["labels"]["test"][0], *manifest["words"]["test"][0])
    assert vl.class_ceiling(keys, 1) > vl.class_ceiling(vl.caption_keys(plain, "test", plain["pairs"]), 1)
    assert vl.caption_keys(plain, "test", 3) == [(c,) for c in plain["labels"]["test"][:3]]
    with pytest.raises(DataError, match="without attributes"):
        vl.write_data(tmp_path / "plain", vl.QUICK, attributes=True)


class PrintingContext:
    """A stand-in for StageContext whose command prints a title and a JSON line on fd 1, as a child would."""

    def __init__(self):
        self.commands = []

    def command(self, title, argv):
        self.commands.append("modaloom " + " ".join(argv))
        os.write(1, f"== {title}\n".encode() + json.dumps({"accuracy": 0.5}).encode() + b"\n")


def test_command_json_keeps_the_last_line_and_is_reused(tmp_path):
    ctx = PrintingContext()
    out = tmp_path / "metrics.json"
    assert command_json(ctx, "evaluate", ["evaluate", "--model", "m"], out) == {"accuracy": 0.5}
    assert json.loads(out.read_text()) == {"accuracy": 0.5} and ctx.commands == ["modaloom evaluate --model m "
                                                                                "> metrics.json"]
    assert command_json(ctx, "evaluate", ["evaluate"], out) == {"accuracy": 0.5} and len(ctx.commands) == 1
    out.unlink()
    ctx.command = lambda title, argv: ctx.commands.append("x")  # prints nothing
    with pytest.raises(DataError, match="printed no JSON line"):
        command_json(ctx, "evaluate", ["evaluate"], out)


# ---------------------------------------------------------------- end to end


def check_report(report, work):
    assert isinstance(report, StageReport) and report.stage == "vision-language"
    assert {"zero_shot_accuracy", "t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10"} <= set(
        report.headline)
    assert all(0.0 <= v <= 1.0 for v in report.headline.values())
    grid = work / "retrieval_grid.png"
    assert grid.is_file() and grid.stat().st_size < 300_000
    assert any(f.path == "retrieval_grid.png" for f in report.figures)
    assert all((work / f.path).is_file() for f in report.figures)
    assert (work / report.configs["clip"]).is_file()
    assert report.runs[0]["steps"] == vl.QUICK.steps
    assert len(report.samples) == len(vl.GRID_CAPTIONS)
    assert [t.header for t in report.tables] == [["metric", "CLIP", "chance"], ["direction", "R@1", "R@5", "R@10"]]


@pytest.mark.timeout(240)
def test_stage_quick_end_to_end_on_synthetic_images_then_reuses_every_step(tmp_path, monkeypatch):
    monkeypatch.setattr(vl, "fashion_mnist_splits", synthetic_splits)
    work = tmp_path / "vision-language"
    ctx = StageContext(work=work, quick=True, threads=1, log=io.StringIO())
    report = vl.run(ctx)
    check_report(report, work)
    assert [c.split()[1] for c in report.commands] == ["build-vocab", "finetune", "evaluate", "evaluate", "predict"]
    assert report.commands[2].endswith("> zero_shot.json") and "--task zero_shot" in report.commands[2]
    assert report.wall_s > 0
    report.save(work)
    assert StageReport.load(work).headline == report.headline
    # a second run finds every step's output complete and runs nothing
    again = vl.run(StageContext(work=work, quick=True, threads=1, log=io.StringIO()))
    assert again.commands == [] and again.headline == report.headline


@pytest.mark.timeout(240)
@pytest.mark.skipif(not (vl.SOURCE / fashion_mnist.FILES["train"][0]).is_file(),
                    reason="Fashion-MNIST not installed (Debian dataset-fashion-mnist)")
def test_stage_quick_on_fashion_mnist(tmp_path):
    work = tmp_path / "vision-language"
    report = vl.run(StageContext(work=work, quick=True, threads=1, log=io.StringIO()))
    check_report(report, work)
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == vl.QUICK.train and len(set(manifest["labels"]["train"])) == 10
