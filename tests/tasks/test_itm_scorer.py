"""``task.scorer=itm``: zero-shot and retrieval re-ranked by a VLMo model's matching head (fusion view), through
``modaloom evaluate`` on a tiny random VLMo and tiny synthetic images; the re-ranking itself by hand."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from modaloom.cli.main import main
from modaloom.config import load_config
from modaloom.model import Model
from modaloom.tasks.clip import match_log_odds, recall_from_scores, rerank
from tests.tasks.test_clip_tasks import COLOURS, write_pairs, write_vocab


def test_rerank_orders_the_top_k_by_the_matcher_and_keeps_the_rest_below():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],
                           [0.0, 0.2, 0.4, 0.8]])
    calls = []

    def match(queries, candidates):  # the matcher prefers the higher candidate index
        calls.append((queries.tolist(), candidates.tolist()))
        return candidates.float() * 10

    out = rerank(scores, 2, match)
    assert sorted(zip(*calls[0], strict=True)) == [(0, 0), (0, 2), (1, 2), (1, 3)]  # each row's top 2 only
    assert out.argsort(1, descending=True).tolist() == [[2, 0, 3, 1], [3, 2, 1, 0]]
    assert out[0, 2] == 20 and out[0, 0] == 0 and out[1, 3] == 30  # the matcher's scores themselves
    hidden = rerank(scores, 2, match, keep_rest=False)
    assert torch.isinf(hidden[0, 1]) and torch.isinf(hidden[0, 3]) and hidden[1, 2] == 20
    assert torch.equal(rerank(scores, 9, match).argsort(1, descending=True), torch.tensor([[3, 2, 1, 0]] * 2))


@pytest.fixture(scope="module")
def vlmo(tmp_path_factory):
    """A random tiny VLMo (clr + itm) saved as pretrain leaves it, with its vocabulary; test pairs of 4 colours."""
    root = tmp_path_factory.mktemp("itm_scorer")
    vocab = write_vocab(root / "vocab.txt")
    words = len(vocab.read_text().splitlines())
    torch.manual_seed(3)
    cfg = load_config("vlmo/tiny", [f"model.embedding.streams.0.vocab_size={words}"])
    folder = Model(cfg.model).save(root / "model")
    shutil.copy(vocab, folder / "vocab.txt")
    test = write_pairs(root, "test", 8, 2)
    labelled = root / "colours.tsv"
    labelled.write_text("label\tpath\n" + "".join(f"{list(COLOURS)[i % 4]}\ttest/{i}.png\n" for i in range(8)))
    return root, folder, test, labelled


def evaluate(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def pixels_of(folder, pairs) -> torch.Tensor:
    """The images of a pairs file as evaluation feeds them (the task's own loader: resize, centre crop, norm)."""
    from modaloom.tasks.finetune import task_for_model

    job = task_for_model(folder, "clip_retrieval")
    job.cfg.train.batch_size = 64
    return next(iter(job.input_loader(pairs)))["pixel_values"]


def itm_matrix(folder, captions: list[str], images) -> torch.Tensor:
    """Log-odds of every (caption, image) pair by the saved model's itm head, computed here without the task."""
    from modaloom import load
    from modaloom.tasks.clip import caption_ids
    from modaloom.tasks.finetune import resolve_tokenizer
    from modaloom.tasks.image_io import pad_ids

    model = load(folder).eval()
    tokenizer, _ = resolve_tokenizer(folder, "")
    ids, mask = pad_ids(caption_ids(tokenizer, captions, 16)[0], tokenizer.special_id("pad", "padding"))
    n, m = len(captions), images.shape[0]
    pairs = {"input_ids": ids.repeat_interleave(m, 0), "attention_mask": mask.repeat_interleave(m, 0),
             "pixel_values": images.repeat(n, 1, 1, 1)}
    return match_log_odds(model, pairs, "itm").view(n, m)


def test_retrieval_reranked_by_itm_through_the_cli(vlmo, capsys):
    root, folder, test, _ = vlmo
    base = ["--task", "clip_retrieval", "--model", str(folder), "--input", str(test)]
    plain = evaluate(capsys, *base)
    assert "rerank" not in plain
    # the first stays first: R@1 of captions over the (distinct) images unchanged; captions of one colour are
    # the same text, so an image's first caption may be its twin's (a tie broken either way)
    top1 = evaluate(capsys, *base, "task.scorer=itm", "task.rerank=1")
    assert top1["rerank"] == 1 and top1["t2i_r@1"] == plain["t2i_r@1"]
    every = evaluate(capsys, *base, "task.scorer=itm", "task.rerank=8")  # every candidate: itm's order alone
    captions = [line.split("\t")[0] for line in test.read_text().splitlines()[1:]]
    scores = itm_matrix(folder, captions, pixels_of(folder, test))  # (8 captions, 8 images): all distinct
    expected = recall_from_scores(scores, scores.T, torch.arange(8))
    assert {k: every[k] for k in expected} == pytest.approx(expected)


def test_zero_shot_reranked_by_itm_through_the_cli(vlmo, capsys):
    root, folder, test, labelled = vlmo
    base = ["--task", "zero_shot", "--model", str(folder), "--input", str(labelled),
            "task.templates=[\"a photo of the {} square\", \"the {} square\"]"]
    plain = evaluate(capsys, *base)
    assert evaluate(capsys, *base, "task.scorer=itm", "task.rerank=1")["accuracy"] == plain["accuracy"]
    every = evaluate(capsys, *base, "task.scorer=itm", "task.rerank=4")
    images = pixels_of(folder, test)
    classes = sorted(COLOURS)  # the input's labels, sorted
    per_template = [itm_matrix(folder, [f"a photo of the {c} square" for c in classes], images),
                    itm_matrix(folder, [f"the {c} square" for c in classes], images)]
    predicted = torch.stack(per_template).mean(0).argmax(0)  # each image's class by mean itm log-odds
    gold = torch.tensor([classes.index(list(COLOURS)[i % 4]) for i in range(8)])
    assert every["accuracy"] == pytest.approx(float((predicted == gold).float().mean()))


def test_itm_scorer_errors_a_user_can_act_on(vlmo, capsys, tmp_path):
    from modaloom import load

    root, folder, test, labelled = vlmo
    cfg = load(folder).config  # the same VLMo, its clr target alone
    cfg.targets = [t for t in cfg.targets if t.type != "itm"]
    dual_only = Model(cfg).save(tmp_path / "dual_only")
    shutil.copy(folder / "vocab.txt", dual_only / "vocab.txt")
    capsys.readouterr()
    assert main(["evaluate", "--task", "clip_retrieval", "--model", str(dual_only), "--input", str(test),
                 "task.scorer=itm"]) == 2
    err = capsys.readouterr().err
    assert "task.scorer=itm re-ranks with an itm target" in err and "task.scorer=contrastive" in err
    assert main(["evaluate", "--task", "zero_shot", "--model", str(folder), "--input", str(labelled),
                 "task.scorer=itm", "task.rerank=0"]) == 2
    assert "task.rerank must be at least 1" in capsys.readouterr().err
    assert main(["evaluate", "--task", "clip_retrieval", "--model", str(folder), "--input", str(test),
                 "task.scorer=fusion"]) == 2
    assert "contrastive, itm" in capsys.readouterr().err
