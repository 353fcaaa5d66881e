"""Issue 9 through the real CLI: what a second writer, other data, an abandoned branch, a finished run,
a signal and a redone step must not do to a pretrain run folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modaloom.cli.main import main
from tests.child_env import child_env
from tests.train.data_helpers import tiny_bert_config, write_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("faults") / "bert_data")


def pretrain(config, data, out, *extra):
    return main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(out), *extra])


def command(config: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modaloom.cli.main", "pretrain", "--config", str(config), "--data", str(data),
            "--out", str(out), *extra]


def env() -> dict[str, str]:
    return child_env()


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while max(logged_steps(out), default=0) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the test could act"


def test_a_config_must_name_its_parts(tmp_path, data, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert pretrain(empty, data, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "does not name model.embedding.parts, model.encoder, model.targets" in err and "bert/tiny" in err
    assert not (tmp_path / "o").exists()


def test_out_may_not_hold_the_data_or_foreign_files(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    assert pretrain(config, data, data / "run") == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"precious": true}')
    assert pretrain(config, data, mine) == 2
    assert "holds files that are not a modaloom run (config.json)" in capsys.readouterr().err
    assert json.loads((mine / "config.json").read_text()) == {"precious": True}


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, data):
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 400, "log_every": 1})
    out = tmp_path / "out"
    first = subprocess.Popen(command(config, data, out), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_step(first, out, 2)
        second = subprocess.run(command(config, data, out, "--resume"), env=env(), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        assert f"is being written by modaloom pretrain (pid {first.pid})" in second.stderr
        assert first.poll() is None  # the first run is untouched
    finally:
        first.kill()
        first.wait()
    # a killed holder leaves no stale lock: the run resumes
    done = subprocess.run(command(config, data, out, "--resume", "--steps", str(max(logged_steps(out)) + 2),
                                  "train.save_every=0"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_sigint_saves_exits_130_and_publishes_no_model(tmp_path, data):
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 400, "log_every": 1})
    out = tmp_path / "out"
    proc = subprocess.Popen(command(config, data, out), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    assert not (out / "model").exists()
    assert any(p.name.startswith("step-") for p in (out / "checkpoints").iterdir())


def test_resume_on_data_with_another_vocabulary_or_eval_data_is_refused(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    assert pretrain(config, data, out, "--steps", "2") == 0
    shuffled = write_dataset(tmp_path / "shuffled", reverse_vocab=True)  # same size, other ids
    assert pretrain(config, shuffled, out, "--steps", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "was trained on other data (tokenizer:" in err
    fewer = write_dataset(tmp_path / "fewer", documents=40)  # same vocabulary, another corpus
    assert pretrain(config, fewer, out, "--steps", "4", "--resume") == 2
    assert "was trained on other data (records: checkpoint" in capsys.readouterr().err
    longer = write_dataset(tmp_path / "longer", seq_length=48)
    assert pretrain(config, longer, out, "--steps", "4", "--resume") == 2
    assert "processor_options: checkpoint {" in capsys.readouterr().err
    assert pretrain(config, data, tmp_path / "o2", "train.eval_every=1", "--eval-data", str(shuffled)) == 2
    assert "--eval-data" in capsys.readouterr().err
    bigger = write_dataset(tmp_path / "bigger", vocab_extra=5)
    assert pretrain(config, data, tmp_path / "o3", "train.eval_every=1", "--eval-data", str(bigger)) == 2
    assert "was not made like --data" in capsys.readouterr().err


def test_a_finished_run_keeps_its_summary_and_steps_below_the_checkpoint_are_refused(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml")
    out = tmp_path / "out"
    assert pretrain(config, data, out, "--steps", "4") == 0
    before = (out / "summary.json").read_text()
    assert json.loads(before)["tokens_per_second"] > 0
    capsys.readouterr()
    assert pretrain(config, data, out, "--steps", "4", "--resume") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before and (out / "model" / "model.safetensors").is_file()
    assert pretrain(config, data, out, "--steps", "2", "--resume") == 2
    assert "is at step 4, past train.steps 2" in capsys.readouterr().err


def test_resume_from_an_earlier_checkpoint_starts_a_branch_that_resume_continues(tmp_path, data, capsys):
    config = tiny_bert_config(tmp_path / "c.yaml", train={"save_every": 2, "keep_last": 10})
    out = tmp_path / "out"
    assert pretrain(config, data, out, "--steps", "6") == 0
    root = out / "checkpoints"
    assert pretrain(config, data, out, "--steps", "3", "--resume-from", str(root / "step-2")) == 0
    assert "2 later checkpoint(s) moved to" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "abandoned").iterdir()) == ["step-4", "step-6"]
    assert pretrain(config, data, out, "--steps", "5", "--resume") == 0
    assert "resumed from" in capsys.readouterr().err
    state = json.loads((root / "step-5" / "trainer_state.json").read_text())
    assert state["step"] == 5
    steps = logged_steps(out)
    assert steps == sorted(set(steps))  # every step logged once, in order, across the branch


def test_killed_runs_log_each_step_once_and_evaluate_the_same_batches(tmp_path, data):
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 12, "log_every": 1, "save_every": 4,
                                                          "eval_every": 4, "eval_holdout": 12})
    full = tmp_path / "full"
    subprocess.run(command(config, data, full), env=env(), check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(config, data, out), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_step(proc, out, 6)  # past the step-4 checkpoint: steps 5, 6 will be redone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(command(config, data, out, "--resume"), env=env(), check=True, capture_output=True, timeout=300)
    steps = logged_steps(out)
    assert steps == logged_steps(full)  # no row of a redone step twice

    def evals(run: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: row["eval/loss"] for row in rows if "eval/loss" in row}

    assert evals(out) == evals(full) and sorted(evals(full)) == [4, 8, 12]


def test_token_ids_beyond_the_vocabulary_are_one_line_errors(tmp_path):
    import torch

    from modaloom.errors import DataError
    from modaloom.model import build_model
    from modaloom.train.config import TrainConfig
    from modaloom.train.trainer import Trainer

    model = build_model({"embedding": {"parts": ["word", "pos"], "vocab_size": 10, "emb_size": 8,
                                       "max_seq_length": 8},
                         "encoder": {"hidden_size": 8, "layers_num": 1, "heads_num": 2, "feedforward_size": 8},
                         "targets": [{"type": "lm"}]})
    ids = torch.tensor([[1, 2, 3, 40]])
    batches = [{"input_ids": ids, "lm_labels": torch.tensor([[2, 3, 4, 5]])}]
    trainer = Trainer(model, TrainConfig(steps=1, progress=False, tensorboard=False), batches, tmp_path)
    with pytest.raises(DataError, match=r"training batch #1 .* does not fit the model: index out of range"):
        trainer.fit()


def test_token_ids_are_checked_before_the_batch_moves_to_the_device(tmp_path, monkeypatch):
    """On CUDA an out-of-range id is a device-side assert that ends the process's CUDA context: the ids are
    checked on the CPU before ``to_device`` ever sees them (on every device alike), negative ones too."""
    import torch

    from modaloom.batch import ids_beyond
    from modaloom.errors import DataError
    from modaloom.model import build_model
    from modaloom.train import trainer as trainer_module
    from modaloom.train.config import TrainConfig
    from modaloom.train.trainer import Trainer

    assert ids_beyond({"input_ids": torch.tensor([[0, 9]])}, "input_ids", 10) is None
    assert ids_beyond({"input_ids": torch.tensor([[0, 10]])}, "input_ids", 10) == 10
    assert ids_beyond({"input_ids": torch.tensor([[-3, 2]])}, "input_ids", 10) == -3
    assert ids_beyond({"pixel_values": torch.ones(1, 3)}, "input_ids", 10) is None
    moved = []
    monkeypatch.setattr(trainer_module, "to_device", lambda batch, device: moved.append(batch) or batch)
    model = build_model({"embedding": {"parts": ["word", "pos"], "vocab_size": 10, "emb_size": 8,
                                       "max_seq_length": 8},
                         "encoder": {"hidden_size": 8, "layers_num": 1, "heads_num": 2, "feedforward_size": 8},
                         "targets": [{"type": "lm"}]})
    batches = [{"input_ids": torch.tensor([[1, 2, 3, -1]]), "lm_labels": torch.tensor([[2, 3, 4, 5]])}]
    trainer = Trainer(model, TrainConfig(steps=1, progress=False, tensorboard=False), batches, tmp_path)
    with pytest.raises(DataError, match=r"token id -1 in input_ids, but the word table has 10 rows"):
        trainer.fit()
    assert moved == []
