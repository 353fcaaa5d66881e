"""The speech_to_text task: reading, bad input, truncation, WER/CER, generation from features, and the
finetune/predict/evaluate verbs end to end on synthetic "speech": tones whose pitch encodes a word."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from modaloom.cli.main import main
from modaloom.errors import ConfigError, DataError
from modaloom.tasks.speech_to_text import (
    error_rates,
    frames_admitted,
    normalise_text,
    read_utterances,
    tokenizer_lowercases,
)

PITCH = {"low": 300.0, "mid": 700.0, "high": 1500.0, "top": 3000.0}  # one tone per word


def tone_wave(words: list[str], rate: int, seed: int = 0) -> np.ndarray:
    """0.12 s of a sine per word, 0.04 s of pause around each, over faint white noise: without the noise,
    utterance CMVN would scale every filterbank bin to the same on/off pattern and erase the pitch."""
    t = np.arange(int(0.12 * rate)) / rate
    gap = np.zeros(int(0.04 * rate), dtype=np.float32)
    parts = [gap]
    for word in words:
        parts += [0.4 * np.sin(2 * np.pi * PITCH[word] * t).astype(np.float32), gap]
    wave = np.concatenate(parts)
    return wave + 0.01 * np.random.default_rng(seed).standard_normal(len(wave)).astype(np.float32)


def write_split(root: Path, name: str, utterances: list[list[str]], jsonl: bool = False) -> Path:
    """WAV files under root/wav (odd lines at 8 kHz, resampled by the task) and a TSV or JSONL listing them."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    lines = [] if jsonl else ["text\tpath"]
    for i, words in enumerate(utterances):
        rate = 8000 if i % 2 else 16000
        soundfile.write(root / "wav" / f"{name}{i}.wav", tone_wave(words, rate, seed=i), rate)
        text, audio = " ".join(words), f"wav/{name}{i}.wav"
        lines.append(json.dumps({"text": text, "audio": audio}) if jsonl else f"{text}\t{audio}")
    path = root / f"{name}.{'jsonl' if jsonl else 'tsv'}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_s2t(root: Path) -> tuple[Path, Path]:
    """A 2-conv, 1+1-layer S2T config and a WordPiece vocabulary of the four words."""
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PITCH]) + "\n", encoding="utf-8")
    stack = {"type": "transformer", "hidden_size": 32, "heads_num": 2, "feedforward_size": 64, "norm_position": "pre",
             "final_norm": True, "layers_num": 1, "dropout": 0.0}
    config = {
        "embedding": {"parts": ["speech", "sinusoidal"], "emb_size": 32, "max_seq_length": 64, "position_offset": 2,
                      "audio_feature_size": 80, "conv_channels": [32], "conv_kernel_sizes": [5, 5], "norm": "none",
                      "dropout": 0.0},
        "encoder": {**stack, "mask": "fully_visible"},
        "tgt_embedding": {"parts": ["word", "sinusoidal"], "vocab_size": 10000, "emb_size": 32, "max_seq_length": 32,
                          "position_offset": 2, "pad_id": 1, "norm": "none", "dropout": 0.0},
        "decoder": {**stack, "mask": "causal"},
        "targets": [{"type": "lm", "transform": False, "tie_weights": True, "output_bias": False}],
    }
    path = root / "tiny_s2t.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path, vocab


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading


def test_tsv_and_jsonl_utterances_with_paths_beside_the_file(tmp_path):
    tsv = read_utterances(write(tmp_path / "a.tsv", f"path\ttext\nwav/a.wav\tlow mid\n{tmp_path}/b.wav\ttop\n"), True)
    assert [(u.where, u.audio, u.text) for u in tsv] == [
        (f"{tmp_path / 'a.tsv'}:2", tmp_path / "wav" / "a.wav", "low mid"),
        (f"{tmp_path / 'a.tsv'}:3", tmp_path / "b.wav", "top")]
    tencent = read_utterances(write(tmp_path / "t.tsv", "text\twav_path\nlow\tx.wav\n"), True)
    assert tencent[0].audio == tmp_path / "x.wav"
    jsonl = read_utterances(write(tmp_path / "a.jsonl", '{"text": "low", "audio": "a.wav"}\n{"audio": "b.wav"}\n'),
                            False)
    assert [(u.audio.name, u.text) for u in jsonl] == [("a.wav", "low"), ("b.wav", None)]
    assert read_utterances(write(tmp_path / "n.tsv", "path\na.wav\n"), False)[0].text is None


@pytest.mark.parametrize("name, text, message", [
    ("e.tsv", "text\tpath\nlow\ta.wav\n\nmid\tb.wav\n", r"e.tsv:3: empty line"),
    ("h.tsv", "text\tfile\nlow\ta.wav\n", r"h.tsv:1: header .* has no audio column \(path or wav_path\)"),
    ("l.tsv", "path\na.wav\n", r"l.tsv:1: header .* has no column text"),
    ("f.tsv", "text\tpath\nlow a.wav\n", r"f.tsv:2: 1 tab-separated field\(s\), the header names 2"),
    ("t.tsv", "text\tpath\nlow\ta.wav\n  \tb.wav\n", r"t.tsv:3: empty transcript"),
    ("j.jsonl", '{"text": "low", "audio": "a.wav"\n', r"j.jsonl:1: malformed JSON"),
    ("a.jsonl", '{"text": "low", "wav": "a.wav"}\n', r"a.jsonl:1: no string field audio"),
    ("x.jsonl", '{"text": "", "audio": "a.wav"}\n', r"x.jsonl:1: empty transcript"),
    ("n.jsonl", '{"audio": "a.wav"}\n', r"n.jsonl:1: no field text"),
    ("z.tsv", "text\tpath\n", r"z.tsv: no utterances"),
])
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_utterances(write(tmp_path / name, text), need_text=True)


# ---------------------------------------------------------------- metrics


def test_wer_and_cer_match_hand_counts():
    # "the cat sat" -> "the cat sit": 1 substituted word, 1 substituted character;
    # "a dog" -> "a big dog": 1 inserted word, 4 inserted characters ("big ").
    rates = error_rates(["the cat sat", "a dog"], ["the cat sit", "a big dog"])
    assert rates["wer"] == pytest.approx(2 / 5)
    assert rates["cer"] == pytest.approx(5 / 16)
    assert error_rates(["low mid"], [""]) == {"wer": 1.0, "cer": 1.0}  # an empty hypothesis deletes everything
    with pytest.raises(DataError, match="no utterances"):
        error_rates([], [])


def test_metric_text_normalisation_follows_the_tokenizer(tmp_path):
    from modaloom.data.tokenizers import load_tokenizer

    _, vocab = tiny_s2t(tmp_path)
    assert normalise_text("  Low\tMID  top ", lowercase=True) == "low mid top"
    assert normalise_text("Low  MID", lowercase=False) == "Low MID"
    assert tokenizer_lowercases(load_tokenizer({"type": "wordpiece", "vocab": str(vocab)}))
    assert not tokenizer_lowercases(load_tokenizer({"type": "wordpiece", "vocab": str(vocab), "lowercase": False}))


def test_frames_admitted_fit_the_embedding_after_subsampling():
    from types import SimpleNamespace

    from modaloom.embeddings.speech import subsampled_lengths

    for kernels, limit in (([5, 5], 64), ([3], 10), ([5, 5, 5], 6000)):
        frames = frames_admitted(SimpleNamespace(conv_kernel_sizes=kernels, max_seq_length=limit))
        lengths = subsampled_lengths(torch.tensor([frames, frames + 1]), kernels).tolist()
        assert lengths[0] <= limit < lengths[1]


# ---------------------------------------------------------------- features, truncation, bad audio


def prepared_task(tmp_path: Path, train: Path, options: dict, overrides: list[str] = ()):
    from modaloom.tasks.base import JobPaths
    from modaloom.tasks.finetune import FinetuneInputs, finetune_config
    from modaloom.tasks.speech_to_text import SpeechToTextTask

    config, vocab = tiny_s2t(tmp_path)
    cfg = finetune_config(None, str(config), list(overrides), keep_targets=("lm",))
    inputs = FinetuneInputs(vocab=str(vocab), options=options, overridden={o.split("=")[0] for o in overrides})
    task = SpeechToTextTask(cfg, JobPaths(data=train, out=tmp_path / "out"), inputs)
    task.prepare()
    return task


def test_features_resampling_and_counted_truncation(tmp_path):
    train = write_split(tmp_path, "train", [["low", "mid", "high"], ["low", "mid", "high"], ["top"]])
    task = prepared_task(tmp_path, train, {"max_audio_frames": 40}, ["data.seq_length=3"])
    full = prepared_task(tmp_path, train, {})
    lengths = [len(e["features"]) for e in full.train_examples]
    assert abs(lengths[0] - lengths[1]) <= 1 and lengths[0] > 40  # the 8 kHz copy resampled to 16 kHz
    assert full.train_examples[0]["features"].shape[1] == 80
    assert [len(e["features"]) for e in task.train_examples] == [40, 40, min(40, lengths[2])]
    assert [e["text_ids"] for e in task.train_examples][2] == [task.tokenizer.encode("top")[0]]
    assert all(len(e["text_ids"]) == 2 for e in task.train_examples[:2])  # seq_length 3 leaves [bos] + 2
    assert task.truncated == {"audio": {"train": 2}, "text": {"train": 2}}
    # a new model's decoder vocabulary and padding are the tokenizer's
    assert task.cfg.model.tgt_embedding.vocab_size == 9 and task.cfg.model.tgt_embedding.pad_id == 0
    assert [t.type for t in task.cfg.model.targets] == ["lm"]


def test_missing_and_unreadable_audio_name_file_and_line(tmp_path):
    train = write_split(tmp_path, "train", [["low"], ["mid"]])
    with open(train, "a", encoding="utf-8") as fh:
        fh.write("top\twav/absent.wav\n")
    with pytest.raises(DataError, match=rf"{train}:4: audio file .*absent.wav does not exist"):
        prepared_task(tmp_path, train, {})
    (tmp_path / "wav" / "absent.wav").write_bytes(b"RIFF not really a wave")
    with pytest.raises(DataError, match=rf"{train}:4: .*absent.wav: cannot decode audio"):
        prepared_task(tmp_path, train, {})


def test_a_text_model_is_refused(tmp_path):
    from tests.train.data_helpers import tiny_bert_config

    train = write_split(tmp_path, "train", [["low"]])
    config = tiny_bert_config(tmp_path / "bert.yaml")
    _, vocab = tiny_s2t(tmp_path)
    with pytest.raises(ConfigError, match="needs an encoder-decoder model whose embedding has the speech part"):
        from modaloom.tasks.base import JobPaths
        from modaloom.tasks.finetune import FinetuneInputs, finetune_config
        from modaloom.tasks.speech_to_text import SpeechToTextTask

        cfg = finetune_config(None, str(config), [], keep_targets=("lm",))
        SpeechToTextTask(cfg, JobPaths(data=train, out=tmp_path / "o"), FinetuneInputs(vocab=str(vocab))).prepare()


def test_bad_task_options_are_refused(tmp_path):
    train = write_split(tmp_path, "train", [["low"]])
    with pytest.raises(ConfigError, match="num_beams must be >= 1"):
        prepared_task(tmp_path, train, {"num_beams": 0})


# ---------------------------------------------------------------- generation from features


def test_generate_takes_encoder_inputs_and_beams_match_greedy_at_width_one(tmp_path):
    from modaloom.generation import GenerationConfig, generate
    from modaloom.model import build_model
    from modaloom.tasks.speech_to_text import collate_speech

    train = write_split(tmp_path, "train", [["low", "mid"], ["top"], ["high"]])
    task = prepared_task(tmp_path, train, {})
    torch.manual_seed(0)
    model = build_model(task.cfg.model)
    batch = collate_speech(task.train_examples, task.ids)
    inputs = {"input_features": batch["input_features"], "feature_mask": batch["feature_mask"]}
    config = GenerationConfig(max_new_tokens=5, eos_token_id=task.ids["eos"], pad_token_id=0,
                              decoder_start_token_id=task.ids["bos"])
    greedy = generate(model, None, config, encoder_inputs=inputs)
    one_beam = generate(model, encoder_inputs=inputs, config=GenerationConfig(**{**config.__dict__, "num_beams": 1}))
    assert greedy.tokens.shape[0] == 3 and greedy.token_lists() == one_beam.token_lists()
    # a padded row gives the tokens it gives alone
    alone = generate(model, None, config, encoder_inputs={k: v[1:2, :int(batch["feature_mask"][1].sum())]
                                                          for k, v in inputs.items()})
    assert alone.token_lists()[0] == greedy.token_lists()[1]
    beams = generate(model, None, GenerationConfig(**{**config.__dict__, "num_beams": 3}), encoder_inputs=inputs)
    assert beams.tokens.shape[0] == 3 and beams.scores is not None
    with pytest.raises(ConfigError, match="either prompts .* or encoder_inputs"):
        generate(model, [[1, 2]], config, encoder_inputs=inputs)
    with pytest.raises(ConfigError, match="either prompts .* or encoder_inputs"):
        generate(model, None, config)


# ---------------------------------------------------------------- end to end through the CLI


def random_words(seed: int, count: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(list(PITCH))] for _ in range(count)]


def test_finetune_predict_evaluate_end_to_end(tmp_path, capsys):
    config, vocab = tiny_s2t(tmp_path)
    train = write_split(tmp_path, "train", random_words(0, 32))
    dev = write_split(tmp_path, "dev", random_words(1, 8), jsonl=True)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "speech_to_text", "--config", str(config), "--vocab", str(vocab),
                 "--train", str(train), "--dev", str(dev), "--test", str(dev), "--out", str(out), "--epochs", "8",
                 "--batch-size", "4", "--lr", "5e-3", "train.threads=1", "train.warmup_ratio=0",
                 "task.num_beams=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_dev"]["metric"] == "wer" and summary["best_dev"]["value"] <= 0.5  # it learned (chance: 0.75)
    assert summary["test/wer"] == pytest.approx(summary["best_dev"]["value"])  # the exported model is the best
    section = json.loads((out / "model" / "config.json").read_text())["task"]
    assert section["name"] == "speech_to_text" and section["options"]["num_beams"] == 2
    assert (out / "model" / "tokenizer").is_dir()

    predictions = tmp_path / "p.jsonl"
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model"), "--input", str(dev), "--out", str(predictions)]) == 0
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 8 and all(set(r) == {"text"} for r in records)
    references = [json.loads(line)["text"] for line in dev.read_text().splitlines()]
    assert main(["evaluate", "--model", str(out / "model"), "--input", str(dev)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx({**error_rates(references, [r["text"] for r in records]), "examples": 8.0})
    assert metrics["wer"] == pytest.approx(summary["test/wer"])

    # an unlabelled TSV is transcribed; evaluate refuses it; a missing file stops predict naming its line
    unlabelled = write(tmp_path / "u.tsv", "path\n" + "".join(f"wav/dev{i}.wav\n" for i in range(3)))
    assert main(["predict", "--model", str(out / "model"), "--input", str(unlabelled),
                 "--out", str(tmp_path / "u.jsonl")]) == 0
    assert [json.loads(x) for x in (tmp_path / "u.jsonl").read_text().splitlines()] == records[:3]
    assert main(["evaluate", "--model", str(out / "model"), "--input", str(unlabelled)]) == 2
    assert "has no labels" in capsys.readouterr().err
    broken = write(tmp_path / "b.tsv", "path\nwav/dev0.wav\nwav/gone.wav\n")
    assert main(["predict", "--model", str(out / "model"), "--input", str(broken),
                 "--out", str(tmp_path / "b.jsonl")]) == 2
    assert f"{broken}:3: audio file" in capsys.readouterr().err and not (tmp_path / "b.jsonl").exists()

    # the fine-tuned folder starts another run: its tokenizer and its lm head are reused, every key matches
    assert main(["finetune", "--task", "speech_to_text", "--model", str(out / "model"), "--train", str(train),
                 "--dev", str(dev), "--out", str(tmp_path / "again"), "--steps", "2", "--batch-size", "4",
                 "train.threads=1", "task.max_new_tokens=3"]) == 0
    assert "every key matched" in capsys.readouterr().err


def test_a_decoder_tokenizer_larger_than_the_target_embedding_is_refused(tmp_path):
    from types import SimpleNamespace

    from modaloom.tasks.finetune import check_vocabulary, finetune_config

    config, _ = tiny_s2t(tmp_path)
    cfg = finetune_config(None, str(config), ["model.tgt_embedding.vocab_size=8"], keep_targets=("lm",))
    assert [t.type for t in cfg.model.targets] == ["lm"]  # kept, not replaced by the placeholder cls head
    with pytest.raises(DataError, match="has 9 tokens but the model's embedding has 8 rows"):
        check_vocabulary(cfg, SimpleNamespace(vocab_size=9), "v.txt", cfg.model.tgt_embedding)
    check_vocabulary(cfg, SimpleNamespace(vocab_size=8), "v.txt", cfg.model.tgt_embedding)
    assert [t.type for t in finetune_config(None, str(config), []).model.targets] == ["cls"]
