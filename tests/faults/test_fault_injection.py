"""Fault injection through the real CLI: preprocess, pretrain (checkpoint writes included) and convert are
SIGKILLed at random points, 20 times in all. After every kill each output folder is complete or absent, no
input has changed, and a rerun finishes the job."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modaloom
from modaloom.data.storage import open_dataset
from modaloom.train.checkpoint import complete_checkpoints
from modaloom.weights import read_tensors
from tests.child_env import child_env
from tests.train.data_helpers import sentences, tiny_bert_config, write_vocab
from tests.train.test_kill import assert_checkpoints_intact

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20


def env() -> dict[str, str]:
    return child_env()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modaloom.cli.main", *args]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes (and its mode), to show nothing was touched."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest() + oct(path.stat().st_mode)
    return out


def logged_rows(run: Path) -> list[str]:
    path = run / "metrics.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def dataset_complete_or_absent(out: Path, records: int | None) -> None:
    if not out.exists():
        return
    dataset = open_dataset(out)  # manifest present, every shard's sizes checked
    if records is not None:
        assert len(dataset) == records


def run_folder_consistent(out: Path) -> None:
    assert_checkpoints_intact(out)
    if (out / "model").exists():
        modaloom.load(out / "model")
        assert (out / "model" / "tokenizer").is_dir()
    for name in ("summary.json", "config.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())


def model_folder_complete_or_absent(out: Path) -> None:
    if out.exists():
        names = {p.name for p in out.iterdir()}
        assert {"config.json", "model.safetensors"} <= names, names
        read_tensors(out / "model.safetensors")
        json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The user's files: a corpus, a vocabulary, a config and a model folder to convert."""
    folder = tmp_path_factory.mktemp("fault_inputs")
    vocab = write_vocab(folder / "vocab.txt")
    lines = sentences(60000, seed=3)
    (folder / "corpus.txt").write_text("".join(f"{a} {b}\n" if i % 5 else "\n"
                                               for i, (a, b) in enumerate(zip(lines[::2], lines[1::2]))))
    config = tiny_bert_config(folder / "bert.yaml", layers=2, train={"steps": 100_000, "save_every": 1,
                                                                      "keep_last": 2, "log_every": 1})
    model = modaloom.build_model({"embedding": {"parts": ["word", "pos", "seg"], "vocab_size": 38, "emb_size": 64,
                                                "max_seq_length": 64},
                                  "encoder": {"hidden_size": 64, "layers_num": 4, "heads_num": 4,
                                              "feedforward_size": 128},
                                  "targets": [{"type": "mlm", "tie_weights": True}]})
    model.save(folder / "bert_model")
    return {"folder": folder, "vocab": vocab, "corpus": folder / "corpus.txt", "config": config,
            "model": folder / "bert_model"}


def test_random_kills_leave_every_output_complete_or_absent(tmp_path, inputs):
    rng = random.Random(20261130)
    work = tmp_path / "outputs"
    work.mkdir()
    before = snapshot(inputs["folder"])
    data, run, converted = work / "data", work / "run", work / "hf"
    preprocess = cli("preprocess", "--processor", "bert", "--corpus", str(inputs["corpus"]), "--vocab",
                     str(inputs["vocab"]), "--out", str(data), "--seq-length", "32", "--shard-mb", "0.02",
                     "--overwrite")
    convert = cli("convert", "--from", "modaloom", "--to", "hf", str(inputs["model"]), str(converted), "--overwrite")
    # a complete dataset first, so that pretrain has data while preprocess is killed again and again
    subprocess.run(preprocess, env=env(), check=True, capture_output=True, timeout=300)
    records = len(open_dataset(data))
    kinds = ["preprocess", "pretrain", "convert"] * (KILLS // 3 + 1)
    rng.shuffle(kinds)
    pretrain_started = False
    killed: dict[str, int] = {}
    for kind in kinds[:KILLS]:
        # each job is killed a random time after it shows it is under way (not after a fixed wall time,
        # which a fast machine outruns): preprocess once its partial folder exists, pretrain once it has
        # logged a step of this run, convert after start-up
        if kind == "preprocess":
            cmd, delay = preprocess, rng.uniform(0.0, 0.8)
            started = (work / ".data.partial").exists
        elif kind == "pretrain":
            cmd = cli("pretrain", "--config", str(inputs["config"]), "--data", str(data), "--out", str(run),
                      *(["--resume"] if pretrain_started else []))
            delay, logged = rng.uniform(0.0, 1.5), len(logged_rows(run))
            started = lambda logged=logged: len(logged_rows(run)) > logged  # noqa: E731
            pretrain_started = True
        else:
            cmd, delay, started = convert, rng.uniform(1.0, 4.0), lambda: True
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        give_up = time.monotonic() + 120
        while proc.poll() is None and not started() and time.monotonic() < give_up:
            time.sleep(0.005)
        deadline = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed[kind] = killed.get(kind, 0) + 1
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), f"{kind} failed: {err[-2000:]}"
        dataset_complete_or_absent(data, records)
        run_folder_consistent(run)
        model_folder_complete_or_absent(converted)
        assert snapshot(inputs["folder"]) == before, f"an input changed after killing {kind}"
    print(f"killed: {killed} of {KILLS} runs")
    assert sum(killed.values()) >= KILLS * 3 // 4 and len(killed) == 3  # the kills landed mid-job
    # every job, rerun, completes from where the kills left it
    subprocess.run(preprocess, env=env(), check=True, capture_output=True, timeout=300)
    assert len(open_dataset(data)) == records
    finish = cli("pretrain", "--config", str(inputs["config"]), "--data", str(data), "--out", str(run), "--resume",
                 "--steps", str(max(s for s, _ in complete_checkpoints(run)) + 2))
    done = subprocess.run(finish, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run_folder_consistent(run)
    assert (run / "model" / "model.safetensors").is_file()
    subprocess.run(convert, env=env(), check=True, capture_output=True, timeout=300)
    model_folder_complete_or_absent(converted)
    assert snapshot(inputs["folder"]) == before
