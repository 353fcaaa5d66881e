"""The image_classification task: reading TSV / JSONL / image folders, bad images, and finetune -> predict ->
evaluate -> convert end to end on a tiny ViT and tiny synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modaloom.cli.main import main
from modaloom.errors import DataError
from modaloom.tasks.image_io import load_images, read_image_bytes, read_image_rows

CLASSES = ("dark", "light")


def tiny_vit_config(path, size=16, patch=4):
    """A ViT of one layer, 32 wide, on size x size images."""
    path.write_text(json.dumps({"model": {
        "embedding": {"parts": ["patch", "pos"], "emb_size": 32, "max_seq_length": (size // patch) ** 2 + 1,
                      "image_height": size, "image_width": size, "patch_size": patch, "cls_token": True,
                      "norm": "none", "dropout": 0.0},
        "encoder": {"type": "transformer", "hidden_size": 32, "layers_num": 1, "heads_num": 2,
                    "feedforward_size": 64, "act": "gelu", "norm": "layernorm", "norm_position": "pre",
                    "final_norm": True, "mask": "fully_visible", "dropout": 0.0},
        "targets": [{"type": "cls", "labels_num": 2, "pooling": "first", "pooler": False}]},
        "data": {"processor": "vit"}}))
    return path


def save_image(path, label, rng, size=12):
    """A grey-level image whose brightness tells its class (dark or light), with noise; PNG."""
    base = 40 if label == "dark" else 210
    pixels = np.clip(base + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def write_split(root, name, count, seed, fmt="tsv"):
    """``count`` labelled images under root/name/ and their list file (TSV label path, or JSONL)."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True)
    rows = []
    for i in range(count):
        label = CLASSES[i % 2]
        save_image(root / name / f"{i}.png", label, rng)
        rows.append((label, f"{name}/{i}.png"))
    if fmt == "tsv":
        path = root / f"{name}.tsv"
        path.write_text("label\tpath\n" + "".join(f"{lab}\t{p}\n" for lab, p in rows))
    else:
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"label": lab, "image": p}) + "\n" for lab, p in rows))
    return path


# ---------------------------------------------------------------- reading


def test_tsv_jsonl_and_folder_rows(tmp_path):
    tsv = write_split(tmp_path, "a", 4, 0)
    rows = read_image_rows(tsv, ("label",))
    assert [(r.label, r.image, r.where) for r in rows[:2]] == [
        ("dark", tmp_path / "a" / "0.png", f"{tsv}:2"), ("light", tmp_path / "a" / "1.png", f"{tsv}:3")]
    jsonl = write_split(tmp_path, "b", 2, 1, fmt="jsonl")
    assert [(r.label, r.image.name) for r in read_image_rows(jsonl, ("label",))] == [("dark", "0.png"),
                                                                                    ("light", "1.png")]
    folder = tmp_path / "folder"
    for label in CLASSES:
        (folder / label).mkdir(parents=True)
        save_image(folder / label / "x.png", label, np.random.default_rng(2))
    (folder / "light" / "notes.txt").write_text("not an image")
    assert [(r.label, r.image.name) for r in read_image_rows(folder)] == [("dark", "x.png"), ("light", "x.png")]


@pytest.mark.parametrize("name, text, message", [
    ("h.tsv", "label\tfile\nx\ty.png\n", r"h.tsv:1: header .* has no image column"),
    ("l.tsv", "path\ny.png\n", r"l.tsv:1: header .* has no column label"),
    ("e.tsv", "label\tpath\nx\ty.png\n\n", r"e.tsv:3: empty line"),
    ("f.tsv", "label\tpath\nx\n", r"f.tsv:2: 1 tab-separated field"),
    ("j.jsonl", '{"label": "x", "image": "y.png"\n', r"j.jsonl:1: malformed JSON"),
    ("k.jsonl", '{"label": "x", "img": "y.png"}\n', r"k.jsonl:1: no string field image"),
    ("z.tsv", "label\tpath\n", r"z.tsv: no examples"),
])
def test_bad_lists_name_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        read_image_rows(tmp_path / name, ("label",))


def test_missing_and_corrupt_images_name_the_line_or_are_counted(tmp_path, capsys):
    tsv = write_split(tmp_path, "a", 4, 0)
    (tmp_path / "a" / "1.png").unlink()
    (tmp_path / "a" / "2.png").write_bytes(b"not a png")
    rows = read_image_rows(tsv, ("label",))
    with pytest.raises(DataError, match=rf"{tsv}:3: image file .*1.png not found"):
        read_image_bytes(rows[1])
    with pytest.raises(DataError, match=rf"{tsv}:4: .*2.png: cannot decode image"):
        read_image_bytes(rows[2])
    loaded = load_images(rows, True, "train", "image_classification")
    assert [r.where for r in loaded.rows] == [f"{tsv}:2", f"{tsv}:5"] and len(loaded.skipped) == 2
    assert "skipped 2 of 4 train examples" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    files = {"train": write_split(root, "train", 24, 0), "dev": write_split(root, "dev", 8, 1, fmt="jsonl"),
             "test": write_split(root, "test", 8, 2)}
    config = tiny_vit_config(root / "vit.json")
    out = root / "ft"
    code = main(["finetune", "--task", "image_classification", "--config", str(config), "--train",
                 str(files["train"]), "--dev", str(files["dev"]), "--test", str(files["test"]), "--out", str(out),
                 "--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "train.threads=1"])
    assert code == 0
    return root, files, out


def test_finetune_exports_labels_and_learns(tuned):
    root, files, out = tuned
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["task"]["name"] == "image_classification" and config["task"]["labels"] == ["dark", "light"]
    assert config["task"]["options"]["norm"] == "imagenet"  # the vit processor's normalisation
    assert not (out / "model" / "tokenizer").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["best_dev"]["metric"] == "accuracy"
    assert summary["test/accuracy"] >= 0.75 and "test/macro_f1" in summary


def test_predict_and_evaluate_line_up(tuned, capsys):
    root, files, out = tuned
    model = out / "model"
    assert main(["predict", "--model", str(model), "--input", str(files["test"]), "--out", str(root / "p.jsonl")]) == 0
    predictions = [json.loads(line) for line in (root / "p.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all(set(p["probabilities"]) == set(CLASSES) for p in predictions)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    gold = [line.split("\t")[0] for line in files["test"].read_text().splitlines()[1:]]
    assert metrics["accuracy"] == pytest.approx(np.mean([p["label"] == g for p, g in zip(predictions, gold)]))
    assert metrics["examples"] == 8 and "macro_f1" in metrics
    # predict never skips: a missing image names its line
    broken = root / "broken.tsv"
    broken.write_text("label\tpath\ndark\ttest/0.png\nlight\ttest/nowhere.png\n")
    assert main(["predict", "--model", str(model), "--input", str(broken), "--out", str(root / "b.jsonl")]) == 2
    assert f"{broken}:3: image file" in capsys.readouterr().err and not (root / "b.jsonl").exists()
    unknown = root / "unknown.tsv"
    unknown.write_text("label\tpath\nmedium\ttest/0.png\n")
    assert main(["evaluate", "--model", str(model), "--input", str(unknown)]) == 2
    assert f"{unknown}:2: label 'medium' is not in the label set" in capsys.readouterr().err


def test_image_folder_input_and_refit_from_the_folder(tuned, tmp_path):
    root, files, out = tuned
    folder = tmp_path / "images"
    for label in CLASSES:
        (folder / label).mkdir(parents=True)
        for i in range(3):
            save_image(folder / label / f"{i}.png", label, np.random.default_rng(i))
    assert main(["finetune", "--task", "image_classification", "--model", str(out / "model"), "--train",
                 str(folder), "--dev", str(folder), "--out", str(tmp_path / "again"), "--epochs", "1",
                 "--batch-size", "4", "train.threads=1", "task.pooling=mean"]) == 0
    config = json.loads((tmp_path / "again" / "model" / "config.json").read_text())
    assert config["model"]["targets"][0]["pooling"] == "mean" and config["task"]["options"]["pooling"] == "mean"
    # HF's ViTForImageClassification reads the class token: a mean-pooled head is refused, not exported wrong
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(tmp_path / "again" / "model"),
                 str(tmp_path / "hf")]) == 2


def test_hf_export_matches_predict(tuned):
    transformers = pytest.importorskip("transformers")
    root, files, out = tuned
    assert main(["convert", "--from", "modaloom", "--to", "hf", str(out / "model"), str(root / "hf")]) == 0
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["ViTForImageClassification"]
    assert hf_config["id2label"] == {"0": "dark", "1": "light"}
    hf = transformers.ViTForImageClassification.from_pretrained(str(root / "hf")).eval()
    assert main(["predict", "--model", str(out / "model"), "--input", str(files["test"]),
                 "--out", str(root / "q.jsonl")]) == 0
    ours = [json.loads(line) for line in (root / "q.jsonl").read_text().splitlines()]
    from modaloom.data.images import ImageTransform

    transform = ImageTransform(16, 16, "center", "imagenet")
    pixels = np.stack([transform((root / "test" / f"{i}.png").read_bytes(), np.random.default_rng(0))
                       for i in range(8)])
    with torch.no_grad():
        probabilities = hf(pixel_values=torch.from_numpy(pixels)).logits.softmax(-1)
    labels = [hf_config["id2label"][str(int(i))] for i in probabilities.argmax(-1)]
    assert labels == [o["label"] for o in ours]
    assert probabilities[:, 1].tolist() == pytest.approx([o["probabilities"]["light"] for o in ours], abs=1e-4)


def test_an_mae_pretrained_folder_fine_tunes_on_whole_images(tmp_path):
    """An MAE model ([patch, pos, drop_masked] + mae target) fine-tunes: drop_masked, a pre-training-only
    part without weights, is removed (it would need patch masks), and every encoder weight is kept."""
    from modaloom.model import build_model, load
    from modaloom.tasks.image_classification import without_pretraining_parts

    config = json.loads(tiny_vit_config(tmp_path / "vit.json").read_text())["model"]
    config["embedding"]["parts"] = ["patch", "pos", "drop_masked"]
    config["targets"] = [{"type": "mae", "patch_size": 4, "decoder_layers_num": 1, "decoder_hidden_size": 16,
                          "decoder_heads_num": 2, "decoder_feedforward_size": 32}]
    assert without_pretraining_parts(json.loads(json.dumps(config)))["embedding"]["parts"] == ["patch", "pos"]
    mae = build_model(config)
    mae.save(tmp_path / "mae")
    files = {"train": write_split(tmp_path, "train", 16, 0), "dev": write_split(tmp_path, "dev", 8, 1)}
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "image_classification", "--model", str(tmp_path / "mae"), "--train",
                 str(files["train"]), "--dev", str(files["dev"]), "--out", str(out), "--steps", "2",
                 "--batch-size", "8", "train.threads=1"]) == 0
    tuned = load(out / "model")
    assert tuned.config.embedding.parts == ["patch", "pos"]
    assert tuned.embedding.state_dict().keys() == mae.embedding.state_dict().keys()
