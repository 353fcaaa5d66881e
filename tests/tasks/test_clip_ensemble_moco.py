"""Zero-shot prompt ensembles (mean of normalised prompt features, normalised again) and the CLIP tasks on a
model whose contrastive head is a ``moco`` target."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from modaloom.cli.main import main
from modaloom.tasks.clip import ensemble_features
from tests.tasks.test_clip_tasks import COLOURS, tiny_clip_config, tuned, write_pairs, write_vocab  # noqa: F401


def test_ensemble_is_the_mean_of_normalised_features_normalised_again():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 5.0]])
    # by hand: rows of a normalised: (0.6, 0.8), (1, 0); of b: (0, 1), (0, 1); means (0.3, 0.9), (0.5, 0.5)
    expected = torch.tensor([[0.3, 0.9], [0.5, 0.5]])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(ensemble_features([a, b]), expected)
    assert torch.allclose(ensemble_features([a]), F.normalize(a, dim=-1))  # one template: its own features


def labelled_file(root):
    path = root / "colours.tsv"
    path.write_text("label\tpath\n" + "".join(f"{list(COLOURS)[i % 4]}\ttest/{i}.png\n" for i in range(8)))
    return path


def zero_shot(model_dir, labelled, capsys, *options):
    capsys.readouterr()
    code = main(["evaluate", "--task", "zero_shot", "--model", str(model_dir), "--input", str(labelled), *options])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_zero_shot_with_a_prompt_ensemble_through_the_cli(tuned, capsys):  # noqa: F811
    root, files, out = tuned
    labelled = labelled_file(root)
    templates = ["a photo of the {} square", "the {} square", "a {} photo"]
    code, listed = zero_shot(out / "model", labelled, capsys, f"task.templates={json.dumps(templates)}")
    assert code == 0 and listed["classes"] == 4 and listed["examples"] == 8 and listed["accuracy"] >= 0.5
    (root / "templates.txt").write_text("\n".join(templates) + "\n\n")
    code, from_file = zero_shot(out / "model", labelled, capsys, f"task.templates={root / 'templates.txt'}")
    assert code == 0 and from_file == listed
    # an ensemble of one template is that template alone
    code, single = zero_shot(out / "model", labelled, capsys, "task.template=a photo of the {} square")
    code1, ensemble_of_one = zero_shot(out / "model", labelled, capsys, 'task.templates=["a photo of the {} square"]')
    assert code == code1 == 0 and single == ensemble_of_one
    code, err = zero_shot(out / "model", labelled, capsys, 'task.templates=["no slot", "the {} square"]')
    assert code == 2 and "'no slot' has no {} for the class name" in err
    code, err = zero_shot(out / "model", labelled, capsys, "task.templates=missing.txt")
    assert code == 2 and "neither a JSON list of templates nor a file" in err
    code, err = zero_shot(out / "model", labelled, capsys, "task.template={}", 'task.templates=["{}"]')
    assert code == 2 and "not both" in err


def test_clip_retrieval_and_zero_shot_accept_a_moco_model(tmp_path, capsys):
    config = tiny_clip_config(tmp_path / "moco.json")
    spec = json.loads(config.read_text())
    spec["model"]["targets"] = [{"type": "moco", "feature_size": 16, "poolings": ["mean", "first"],
                                 "momentum": 0.9, "queue_size": 8}]
    config.write_text(json.dumps(spec))
    files = {name: write_pairs(tmp_path, name, count, seed)
             for name, count, seed in (("train", 16, 0), ("dev", 8, 1), ("test", 8, 2))}
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "clip_retrieval", "--config", str(config), "--vocab",
                 str(write_vocab(tmp_path / "vocab.txt")), "--train", str(files["train"]), "--dev", str(files["dev"]),
                 "--test", str(files["test"]), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "train.threads=1"]) == 0
    saved = json.loads((out / "model" / "config.json").read_text())
    assert [t["type"] for t in saved["model"]["targets"]] == ["moco"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test/mean_recall"] <= 1.0 and summary["test/examples"] == 8
    code, metrics = zero_shot(out / "model", labelled_file(tmp_path), capsys)
    assert code == 0 and metrics["classes"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0
