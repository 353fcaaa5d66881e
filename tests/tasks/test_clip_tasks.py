"""The CLIP tasks: recall@K, caption ids, and clip_retrieval finetune -> predict -> evaluate plus zero_shot
evaluation end to end on a tiny dual model and tiny synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modaloom.cli.main import main
from modaloom.tasks.clip import caption_ids, recall_metrics

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 40)}
WORDS = ["a", "photo", "of", "the", *COLOURS, "square"]


def write_vocab(path):
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


def tiny_clip_config(path, size=16, patch=8):
    """Two towers of one layer, 32 wide: text (word + pos, mean-pooled) and image (patches, class token)."""
    layer = {"type": "transformer", "hidden_size": 32, "layers_num": 1, "heads_num": 2, "feedforward_size": 64,
             "norm": "layernorm", "norm_position": "pre", "final_norm": True, "dropout": 0.0}
    path.write_text(json.dumps({"model": {
        "embedding": {"parts": ["dual"], "norm": "none", "dropout": 0.0, "streams": [
            {"parts": ["word", "pos"], "vocab_size": 0, "emb_size": 32, "max_seq_length": 16, "norm": "none",
             "dropout": 0.0},
            {"parts": ["patch", "pos"], "emb_size": 32, "max_seq_length": (size // patch) ** 2 + 1,
             "image_height": size, "image_width": size, "patch_size": patch, "cls_token": True, "norm": "none",
             "dropout": 0.0}]},
        "encoder": {"type": "dual", "streams": [{**layer, "mask": "fully_visible"}, {**layer, "mask": "fully_visible"}]},
        "targets": [{"type": "clr", "feature_size": 16, "poolings": ["mean", "first"]}]},
        "data": {"processor": "clip"}}))
    return path


def save_image(path, colour, rng, size=12):
    pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def write_pairs(root, name, count, seed):
    """``count`` coloured squares and their captions (TSV text path)."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True)
    lines = ["text\tpath"]
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        save_image(root / name / f"{i}.png", colour, rng)
        lines.append(f"a photo of the {colour} square\t{name}/{i}.png")
    (root / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root / f"{name}.tsv"


# ---------------------------------------------------------------- units


def test_recall_ranks_images_shared_by_several_captions():
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0.2, 1.0], [0, 0, 1.0]])
    image_id = torch.tensor([0, 0, 1, 2])  # rows 0, 1 show image 0; images 1 and 2 one caption each
    rows = torch.stack([image[0], image[0], image[1], image[2]])
    out = recall_metrics(text, rows, image_id)
    # captions -> images: rows 0, 1 find image 0 first (a tie is no worse); row 2 ranks image 2 (1.0) above its
    # image 1 (0.2); row 3 is right
    assert out["t2i_r@1"] == pytest.approx(3 / 4)
    # images -> captions: image 0 -> caption 0; image 1 prefers caption 1 (0.5) to its own (0.2); image 2 ties
    # captions 2 and 3, its own: only strictly better captions rank above
    assert out["i2t_r@1"] == pytest.approx(2 / 3) and out["i2t_r@5"] == 1.0
    assert out["images"] == 3 and out["examples"] == 4


def test_caption_ids_add_specials_and_count_cuts(tmp_path):
    from modaloom.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer({"type": "wordpiece", "vocab": str(write_vocab(tmp_path / "v.txt"))})
    ids, cut = caption_ids(tokenizer, ["a red square", "a photo of the blue square"], 5)
    assert ids[0] == [2, *tokenizer.encode("a red square"), 3] and len(ids[1]) == 5 and cut == 1


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    files = {"train": write_pairs(root, "train", 32, 0), "dev": write_pairs(root, "dev", 8, 1),
             "test": write_pairs(root, "test", 8, 2)}
    out = root / "ft"
    code = main(["finetune", "--task", "clip_retrieval", "--config", str(tiny_clip_config(root / "clip.json")),
                 "--vocab", str(write_vocab(root / "vocab.txt")), "--train", str(files["train"]), "--dev",
                 str(files["dev"]), "--test", str(files["test"]), "--out", str(out), "--epochs", "6",
                 "--batch-size", "8", "--lr", "3e-3", "train.threads=1",
                 "train.adam_bias_correction=true"])  # tuned with torch's AdamW (random init, high lr)
    assert code == 0
    return root, files, out


def test_finetune_keeps_the_contrastive_head_and_reports_recall(tuned):
    root, files, out = tuned
    config = json.loads((out / "model" / "config.json").read_text())
    assert [t["type"] for t in config["model"]["targets"]] == ["clr"]
    assert config["task"]["name"] == "clip_retrieval" and config["task"]["options"]["norm"] == "clip"
    assert (out / "model" / "tokenizer").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "mean_recall"
    assert {"test/i2t_r@1", "test/t2i_r@5", "test/mean_recall"} <= set(summary)
    # four colours: after training a caption finds an image of its colour in the top 2 of 8
    assert summary["test/t2i_r@5"] == 1.0


def test_predict_and_evaluate_retrieval(tuned, capsys):
    root, files, out = tuned
    assert main(["predict", "--model", str(out / "model"), "--input", str(files["test"]),
                 "--out", str(root / "p.jsonl")]) == 0
    predictions = [json.loads(line) for line in (root / "p.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all(1 <= p["image_rank"] <= 8 and 1 <= p["text_rank"] <= 8 for p in predictions)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model"), "--input", str(files["test"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["t2i_r@1"] == pytest.approx(np.mean([p["image_rank"] == 1 for p in predictions]))
    assert metrics["examples"] == 8 and metrics["images"] == 8


def test_evaluate_retrieval_with_a_model_no_task_saved(tuned, capsys, tmp_path):
    # a folder without a task section, as pretrain or convert leaves it: plain `evaluate` refuses it, `evaluate
    # --task clip_retrieval` ranks with it (captions cut to the text positions) and agrees with the tuned folder
    import shutil

    root, files, out = tuned
    bare = tmp_path / "pretrained"
    shutil.copytree(out / "model", bare)
    config = json.loads((bare / "config.json").read_text())
    del config["task"]
    (bare / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(bare), "--input", str(files["test"])]) == 2
    assert "is not a fine-tuned model" in capsys.readouterr().err
    assert main(["evaluate", "--task", "clip_retrieval", "--model", str(bare), "--input", str(files["test"])]) == 0
    bare_metrics = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--model", str(out / "model"), "--input", str(files["test"])]) == 0
    assert bare_metrics == json.loads(capsys.readouterr().out)


def test_zero_shot_evaluate(tuned, capsys):
    root, files, out = tuned
    labelled = root / "colours.tsv"
    labelled.write_text("label\tpath\n" + "".join(f"{list(COLOURS)[i % 4]}\ttest/{i}.png\n" for i in range(8)))
    capsys.readouterr()
    assert main(["evaluate", "--task", "zero_shot", "--model", str(out / "model"), "--input", str(labelled),
                 "task.template=a photo of the {} square"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["classes"] == 4 and metrics["examples"] == 8 and metrics["accuracy"] >= 0.5
    # the class list may hold names the file does not use; a label outside it names the line
    assert main(["evaluate", "--task", "zero_shot", "--model", str(out / "model"), "--input", str(labelled),
                 "task.classes=red,green,blue"]) == 2
    assert f"{labelled}:5: label 'yellow' is not one of the classes" in capsys.readouterr().err
    assert main(["evaluate", "--task", "zero_shot", "--model", str(out / "model"), "--input", str(labelled),
                 "task.template=no slot"]) == 2
    assert "has no {} for the class name" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(out / "model"), "--input", str(labelled), "task.classes=a,b"]) == 2
    assert "unknown key 'classes'; valid keys: rerank, scorer" in capsys.readouterr().err  # retrieval's options


def test_zero_shot_does_not_train_and_clip_needs_a_dual_model(tuned, capsys, tmp_path):
    root, files, out = tuned
    assert main(["finetune", "--task", "zero_shot", "--model", str(out / "model"), "--train", str(files["train"]),
                 "--dev", str(files["dev"]), "--out", str(tmp_path / "z")]) == 2
    assert "zero_shot does not train" in capsys.readouterr().err
    from tests.tasks.test_image_classification import tiny_vit_config

    assert main(["finetune", "--task", "clip_retrieval", "--config", str(tiny_vit_config(tmp_path / "v.json")),
                 "--vocab", str(root / "vocab.txt"), "--train", str(files["train"]), "--dev", str(files["dev"]),
                 "--out", str(tmp_path / "c")]) == 2
    assert "CLIP tasks need a dual model" in capsys.readouterr().err


def test_features_refuses_a_dual_model_with_a_way_out(tuned, capsys):
    root, files, out = tuned
    captions = root / "captions.txt"
    captions.write_text("a photo of the red square\n")
    assert main(["features", "--model", str(out / "model"), "--input", str(captions),
                 "--out", str(root / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert "is a dual (two-tower, CLIP-style) model" in err and "modaloom predict" in err
    assert not (root / "f.npy").exists()
