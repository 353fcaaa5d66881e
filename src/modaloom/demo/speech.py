"""The demo's speech stage: spoken numbers synthesised by espeak-ng, a small S2T trained from random init,
word error rate on voices it never heard.

Data: numbers from 0 to 999 written as words ("three hundred and forty two"), spoken by espeak-ng voices made
of an accent (en-us, en-gb, en-gb-scotland, ...) and a voice variant (+m1 ... +f5) at random speeds and
pitches. Whole voices are held out (fixed by the seed) for the dev and the test set; every accent and every
variant is also heard in training, in other combinations. Transcripts are tokenised by a WordPiece vocabulary
of whole words (``modaloom build-vocab``): thirty words, so a transcript is 1-5 tokens and the decoder only
has to pick among words; characters would make the transcripts five times longer and slow both the
alignment the attention has to find and beam search.

Steps (``ctx.command``; each skips when its output is complete): build-vocab, finetune ``speech_to_text``
(a ~0.3M-parameter S2T from random init, configs written into the stage folder), evaluate on the dev and the
held-out test voices (beam search, WER and CER via jiwer), predict a few test transcripts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modaloom.atomic import atomic_write_json
from modaloom.demo.install import ensure_debian_package
from modaloom.demo.stage import Figure, StageContext, StageReport, Table, command_json, run_summary, timed
from modaloom.errors import DataError

SEED = 11
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")
ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SPLITS = ("train", "dev", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Sizes:
    """How big the stage runs: utterances per split, held-out voices, training and model sizes."""

    train: int
    dev: int
    test: int
    dev_voices: int
    test_voices: int
    epochs: int
    eval_every: int  # steps between dev evaluations (and at the end)
    batch_size: int
    lr: float
    emb_size: int
    conv_channels: int
    layers: int
    feedforward: int
    samples: int  # test transcripts shown in the report


FULL = Sizes(train=1200, dev=120, test=300, dev_voices=3, test_voices=6, epochs=16, eval_every=400,
             batch_size=8, lr=1.5e-3, emb_size=64, conv_channels=128, layers=2, feedforward=192, samples=6)
QUICK = Sizes(train=32, dev=8, test=8, dev_voices=1, test_voices=1, epochs=1, eval_every=4, batch_size=8,
              lr=1e-3, emb_size=32, conv_channels=32, layers=1, feedforward=64, samples=3)


@dataclass(frozen=True)
class Utterance:
    """One utterance to synthesise: where its WAV goes (relative to the data folder) and how it is spoken."""

    split: str
    wav: str
    voice: str
    speed: int  # words per minute
    pitch: int  # 0-99
    text: str


def number_words(n: int) -> str:
    """0..999 in British-style words: 342 -> 'three hundred and forty two'."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words takes 0..999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def vocabulary_words() -> list[str]:
    """Every word a transcript can hold (30)."""
    return [*ONES, *TENS[2:], "hundred", "and"]


def voice_split(sizes: Sizes, seed: int = SEED) -> dict[str, list[str]]:
    """All accent+variant voices shuffled by the seed: the first are the test voices, then the dev voices, the
    rest train; a held-out voice is a combination never heard, made of an accent and a variant that are."""
    voices = [a + v for a in ACCENTS for v in VARIANTS]
    random.Random(seed).shuffle(voices)
    test, dev = voices[:sizes.test_voices], voices[sizes.test_voices:sizes.test_voices + sizes.dev_voices]
    return {"train": voices[sizes.test_voices + sizes.dev_voices:], "dev": dev, "test": test}


def draw_number(rng: random.Random) -> int:
    """A number below 20, below 100 or below 1000 with equal chances (then uniform): one-word numbers teach
    the model each word's sound before it has learnt to align longer utterances, which speeds training up."""
    return rng.randint(0, (19, 99, 999)[rng.randrange(3)])


def plan(sizes: Sizes, seed: int = SEED) -> list[Utterance]:
    """Every utterance of the three splits: numbers, voices, speeds (130-210 wpm), pitches from the seed."""
    rng = random.Random(seed)
    voices = voice_split(sizes, seed)
    out = []
    for split in SPLITS:
        for i in range(getattr(sizes, split)):
            voice = voices[split][i % len(voices[split])]
            speed, pitch, n = rng.randint(130, 210), rng.randint(25, 75), draw_number(rng)
            out.append(Utterance(split, f"wav/{split}/{i:05d}.wav", voice, speed, pitch, number_words(n)))
    return out


def espeak_binary() -> str:
    """The path of espeak-ng, installing the Debian package when missing (as root), else a DataError naming it."""
    ensure_debian_package("espeak-ng", "espeak-ng")
    return shutil.which("espeak-ng") or "espeak-ng"


def synthesise(root: Path, utterances: list[Utterance], processes: int = 2) -> None:
    """Writes each utterance's WAV with espeak-ng (22,050 Hz mono), ``processes`` at a time; existing WAVs are
    kept (a WAV is written under a temporary name and renamed, so an existing one is complete)."""
    espeak = espeak_binary()
    todo = [u for u in utterances if not (root / u.wav).is_file()]
    for folder in {(root / u.wav).parent for u in todo}:
        folder.mkdir(parents=True, exist_ok=True)

    def speak(u: Utterance) -> None:
        target = root / u.wav
        partial = target.with_suffix(".part.wav")
        argv = [espeak, "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch), "-w", str(partial), u.text]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0 or not partial.is_file():
            raise DataError(f"espeak-ng failed on voice {u.voice!r} (exit {done.returncode}): "
                            f"{done.stderr.strip()}")
        os.replace(partial, target)

    with ThreadPoolExecutor(max_workers=processes) as pool:
        list(pool.map(speak, todo))


def write_tsv(path: Path, rows: list[Utterance]) -> None:
    """The speech_to_text task's TSV: header ``text path``, paths relative to the file's folder."""
    lines = ["text\tpath", *(f"{u.text}\t{u.wav}" for u in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare_data(root: Path, sizes: Sizes, log: Any = sys.stderr) -> dict[str, Any]:
    """The data folder: WAVs, ``train/dev/test.tsv``, ``transcripts.txt`` (the vocabulary's corpus) and
    ``manifest.json`` (written last: its presence means the folder is complete, and it is reused)."""
    manifest_path = root / MANIFEST
    utterances = plan(sizes)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("utterances") == len(utterances):
            return manifest
    root.mkdir(parents=True, exist_ok=True)
    print(f"synthesising {len(utterances)} utterances with espeak-ng into {root}", file=log, flush=True)
    synthesise(root, utterances)
    for split in SPLITS:
        write_tsv(root / f"{split}.tsv", [u for u in utterances if u.split == split])
    train_text = [u.text for u in utterances if u.split == "train"]
    (root / "transcripts.txt").write_text("\n".join([*train_text, " ".join(vocabulary_words())]) + "\n",
                                          encoding="utf-8")
    voices = voice_split(sizes)
    manifest = {"utterances": len(utterances), "seed": SEED,
                "splits": {s: {"utterances": getattr(sizes, s), "voices": sorted({u.voice for u in utterances
                                                                                 if u.split == s})}
                           for s in SPLITS},
                "held_out_voices": {"dev": voices["dev"], "test": voices["test"]}}
    atomic_write_json(manifest_path, manifest)
    return manifest


def write_config(path: Path, sizes: Sizes) -> Path:
    """The zoo's ``s2t/small`` shrunk to a model that learns spoken numbers in minutes on a CPU: narrow, two
    encoder and two decoder layers, one conv width, no dropout, label smoothing or embedding scaling (with
    them the loss stalls near the unigram level for this little data: docs/tasks.md)."""
    import yaml

    from modaloom.zoo import zoo_path

    model = yaml.safe_load(zoo_path("s2t/small").read_text(encoding="utf-8"))["model"]
    width = sizes.emb_size
    model["embedding"].update(emb_size=width, conv_channels=[sizes.conv_channels], max_seq_length=1024,
                              scale_embedding=False, dropout=0.0)
    model["tgt_embedding"].update(emb_size=width, max_seq_length=64, scale_embedding=False, dropout=0.0)
    for side in ("encoder", "decoder"):
        model[side].update(hidden_size=width, heads_num=4, feedforward_size=sizes.feedforward,
                           layers_num=sizes.layers, dropout=0.0)
    model["targets"] = [{**model["targets"][0], "label_smoothing": 0.0}]
    model.pop("paper", None)
    config = {"model": model}
    path.write_text("# the speech demo's S2T: configs/s2t/small.yaml shrunk (modaloom/demo/speech.py)\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def finished(run_dir: Path) -> bool:
    """Whether a fine-tuning run finished: its summary and its exported model are there."""
    return (run_dir / "summary.json").is_file() and (run_dir / "model" / "model.safetensors").is_file()


def spectrogram_figure(wav: Path, text: str, out: Path) -> None:
    """The 80-bin filterbank the model reads for one utterance (what ``speech_to_text`` computes), titled with
    its transcript."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modaloom.data.audio import AudioFeatures

    features = AudioFeatures(normalize=False)(wav.read_bytes(), str(wav))
    fig, ax = plt.subplots(figsize=(6.4, 2.4), dpi=100)
    ax.imshow(features.T, origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(features) / 100, 0, features.shape[1]))
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel bin")
    ax.set_title(f"\u201c{text}\u201d ({wav.parent.name}/{wav.name})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a TSV written by ``write_tsv`` as {column: value}."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line]


def voices_of(utterances: list[Utterance], split: str) -> dict[str, str]:
    """wav path -> voice, for the utterances of one split."""
    return {u.wav: u.voice for u in utterances if u.split == split}


@timed
def run(ctx: StageContext) -> StageReport:
    """Synthesise spoken numbers, train a small S2T from random init, measure WER on held-out voices."""
    sizes = QUICK if ctx.quick else FULL
    work = ctx.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    manifest = prepare_data(data, sizes, ctx.log)
    utterances = plan(sizes)

    vocab = work / "vocab.txt"
    if not vocab.is_file():
        ctx.command("word vocabulary of the transcripts",
                    ["build-vocab", "--type", "wordpiece", "--corpus", str(data / "transcripts.txt"),
                     "--vocab-size", "120", "--out", str(vocab)])

    config = write_config(work / "s2t_numbers.yaml", sizes)
    run_dir = work / "run"
    if not finished(run_dir):
        resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
        ctx.command("train a small S2T from random init (speech_to_text)", [
            "finetune", "--task", "speech_to_text", "--config", str(config), "--vocab", str(vocab),
            "--train", str(data / "train.tsv"), "--dev", str(data / "dev.tsv"), "--out", str(run_dir),
            "--epochs", str(sizes.epochs), "--batch-size", str(sizes.batch_size), "--lr", str(sizes.lr),
            "--seq-length", "16", f"train.eval_every={sizes.eval_every}", "train.threads=1",
            "train.warmup_ratio=0.05", "train.adam_bias_correction=true",
            "task.num_beams=4", "task.max_new_tokens=8", *resume])
    model = run_dir / "model"

    seen = data / "train_sample.tsv"
    if not seen.is_file():
        train_rows = read_tsv(data / "train.tsv")[: sizes.test]
        seen.write_text("text\tpath\n" + "".join(f"{r['text']}\t{r['path']}\n" for r in train_rows),
                        encoding="utf-8")
    scores = {}
    for split, path in (("train", seen), ("dev", data / "dev.tsv"), ("test", data / "test.tsv")):
        scores[split] = command_json(ctx, f"word error rate on the {split} voices (beam search, 4 beams)",
                                 ["evaluate", "--model", str(model), "--input", str(path)],
                                 work / f"eval_{split}.json")

    shown = data / "samples.tsv"
    test_rows = read_tsv(data / "test.tsv")
    picked = pick_samples(test_rows, voices_of(utterances, "test"), sizes.samples)
    if not shown.is_file():
        shown.write_text("path\n" + "".join(f"{r['path']}\n" for r in picked), encoding="utf-8")
    predictions = work / "samples.jsonl"
    if not predictions.is_file():
        ctx.command("transcribe a few held-out utterances",
                    ["predict", "--model", str(model), "--input", str(shown), "--out", str(predictions)])
    got = [json.loads(line)["text"] for line in predictions.read_text(encoding="utf-8").splitlines() if line]
    test_voices = voices_of(utterances, "test")
    samples = [{"input": f"{r['path']} (voice {test_voices.get(r['path'], '?')})", "expected": r["text"],
                "got": text} for r, text in zip(picked, got, strict=True)]

    spectrogram = work / "spectrogram.png"
    if not spectrogram.is_file():
        spectrogram_figure(data / picked[0]["path"], picked[0]["text"], spectrogram)
    return report(ctx, sizes, manifest, scores, samples, run_dir, config)


def pick_samples(rows: list[dict[str, str]], voices: dict[str, str], count: int) -> list[dict[str, str]]:
    """Up to ``count`` test utterances, one per held-out voice first (so the samples show several voices)."""
    picked, heard = [], set()
    for row in rows:
        if voices.get(row["path"]) not in heard:
            picked.append(row)
            heard.add(voices.get(row["path"]))
    picked += [r for r in rows if r not in picked]
    return picked[:count]


def report(ctx: StageContext, sizes: Sizes, manifest: dict[str, Any], scores: dict[str, dict[str, float]],
           samples: list[dict[str, str]], run_dir: Path, config: Path) -> StageReport:
    """The stage's report from the evaluations and the training run."""
    splits = manifest["splits"]
    names = {"train": "train (voices heard in training)",
             "dev": "dev (held-out voices, picks the checkpoint)",
             "test": "test (held-out voices)"}
    rows = []
    for split in SPLITS:
        count = int(scores[split].get("examples", 0))
        voices = splits[split]["voices"]
        shown = ", ".join(voices) if len(voices) <= 6 else f"{len(voices)} voices"
        wer, cer = round(scores[split]["wer"], 4), round(scores[split]["cer"], 4)
        rows.append([names[split], shown, count, wer, cer])
    test = scores["test"]
    summary_json = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    summary = (
        f"{manifest['utterances']} utterances of numbers 0-999 in words (\"three hundred and forty two\") "
        f"were synthesised with espeak-ng by {sum(len(s['voices']) for s in splits.values())} voices (an "
        f"accent such as en-gb-scotland with a variant such as +f3, at 130-210 words/min, random pitch). A "
        f"{sizes.layers}+{sizes.layers}-layer S2T (width {sizes.emb_size}) was trained from random init for "
        f"{summary_json.get('steps')} steps on {splits['train']['utterances']} utterances, its transcripts "
        f"tokenised as whole words. On {splits['test']['utterances']} utterances by "
        f"{len(splits['test']['voices'])} voices it never heard (each voice's accent and variant occur in "
        f"training in other combinations), beam search gives WER {test['wer']:.3f} and CER {test['cer']:.3f}."
    )
    if ctx.quick:
        summary += " Quick mode: a few dozen utterances and steps, so the error rates mean nothing."
    figures = [Figure("run/curves.png", "training loss and dev WER / CER (beam search) of the S2T model"),
               Figure("spectrogram.png",
                      "the 80-bin filterbank of one held-out utterance, as the model reads it")]
    return StageReport(
        stage="speech", title="Speech: spoken numbers, held-out voices", summary=summary,
        headline={"wer_heldout_voices": round(test["wer"], 4), "cer_heldout_voices": round(test["cer"], 4)},
        tables=[Table("word and character error rates (beam search, 4 beams)",
                      ["split", "voices", "utterances", "WER", "CER"], rows)],
        figures=[f for f in figures if (ctx.work / f.path).is_file()],
        configs={"S2T model": config.name}, commands=list(ctx.commands), runs=[run_summary("s2t", run_dir)],
        samples=samples)
