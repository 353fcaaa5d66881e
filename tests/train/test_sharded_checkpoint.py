"""Sharded checkpoints (``train.checkpoint_format=sharded``, torch.distributed.checkpoint): atomic step
folders, resume on another number of processes (2 -> 1, 1 -> 2, FSDP2 on gloo) to the weights of an
uninterrupted run, and ``modaloom convert --from checkpoint`` to a model folder on one process.

Across world sizes the global batch is kept at 8 rows (4 per process on 2, 8 on 1; the stand-in loader
gives rank r rows r::world_size of the same global batch), so the optimizer sees the same gradients up to
float summation order: final weights are compared with the tolerance of test_distributed (rtol 1e-5).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modaloom.cli.main import main as cli_main
from modaloom.errors import CheckpointError
from modaloom.model import build_model, load
from modaloom.train import checkpoint as ckpt
from modaloom.train.config import TrainConfig
from modaloom.train.optim import build_optimizer
from modaloom.weights import read_weights
from tests.child_env import child_env
from tests.train.sharded_script import train

ROOT = Path(__file__).resolve().parents[2]
ENV = child_env(cpu=True)


def launch(out: Path, nproc: int, mode: str, fmt: str, steps: int = 6, stop_at: int = 0) -> None:
    args = ["-m", "tests.train.sharded_script", str(out), str(steps), mode, fmt, str(stop_at)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def step_dir(out: Path, step: int) -> Path:
    return ckpt.checkpoint_root(out) / f"step-{step}"


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Six steps on one process, full checkpoints: the weights every resumed run must reach."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train(out, 6, "none", "full")
    return read_weights(step_dir(out, 6) / "model.safetensors")


def test_one_process_sharded_save_and_plain_resume(uninterrupted, tmp_path):
    train(tmp_path, 6, "none", "sharded", stop_at=3)
    three = step_dir(tmp_path, 3)
    assert ckpt.is_sharded_checkpoint(three) and not (three / "model.safetensors").exists()
    state = json.loads((three / ckpt.STATE_FILE).read_text())
    assert state["checkpoint_format"] == "sharded" and state["world_size"] == 1
    train(tmp_path, 6, "none", "sharded")  # a plain model (no FSDP, no process group) loads the shards
    assert_same_weights(ckpt.consolidated_model_state(step_dir(tmp_path, 6)), uninterrupted)


def test_two_processes_write_their_own_shards_and_resume_on_one(uninterrupted, tmp_path):
    launch(tmp_path, 2, "fsdp", "auto", stop_at=3)  # auto: sharded under FSDP2 on 2 processes
    three = step_dir(tmp_path, 3)
    shards = sorted((three / ckpt.MODEL_SHARDS).glob("*.safetensors"))
    assert len(shards) == 2  # one file per rank; each holds half of the (dim-0 sharded) embedding
    for shard in shards:
        with safe_open(str(shard), "pt") as fh:
            assert fh.get_slice("embed.weight").get_shape() == [25, 16]
    assert {p.name for p in three.glob("rank-*.json")} == {"rank-0.json", "rank-1.json"}
    assert not list(ckpt.checkpoint_root(tmp_path).glob("*.tmp"))
    damaged = shutil.copytree(three, tmp_path / "damaged")
    (damaged / ckpt.MODEL_SHARDS / shards[1].name).unlink()  # a lost rank's file is refused, never zero-filled
    with pytest.raises(CheckpointError, match="shard file is missing"):
        ckpt.consolidated_model_state(damaged)
    launch(tmp_path, 1, "none", "sharded")
    assert json.loads((step_dir(tmp_path, 6) / ckpt.STATE_FILE).read_text())["world_size"] == 1
    assert_same_weights(ckpt.consolidated_model_state(step_dir(tmp_path, 6)), uninterrupted)


def test_one_process_checkpoint_resumes_on_two_fsdp(uninterrupted, tmp_path):
    launch(tmp_path, 1, "none", "sharded", stop_at=3)
    launch(tmp_path, 2, "fsdp", "sharded")
    six = step_dir(tmp_path, 6)
    assert len(list((six / ckpt.MODEL_SHARDS).glob("*.safetensors"))) == 2
    assert_same_weights(ckpt.consolidated_model_state(six), uninterrupted)


def small_model_checkpoint(out: Path, fail_swap: bool = False):
    """A tiny modaloom BERT (tied MLM weights) saved as a sharded step-1 on this process."""
    import yaml

    from tests.train.data_helpers import tiny_bert_config

    section = yaml.safe_load(tiny_bert_config(out.parent / f"{out.name}.yaml", vocab_size=30).read_text())["model"]
    torch.manual_seed(0)
    model = build_model(section)
    opt = build_optimizer(model, TrainConfig(lr=0.01))
    return model, section, ckpt.save_checkpoint(out, 1, model, opt, {}, {"data": {}}, section, sharded=True)


def test_killed_sharded_writer_leaves_no_step_folder(tmp_path, monkeypatch):
    def killed(tmp, final):
        raise KeyboardInterrupt  # the writer dies after every shard is written, before the rename

    monkeypatch.setattr(ckpt, "swap_directory", killed)
    with pytest.raises(KeyboardInterrupt):
        small_model_checkpoint(tmp_path / "run")
    root = ckpt.checkpoint_root(tmp_path / "run")
    assert (root / "step-1.tmp" / ckpt.MODEL_SHARDS).is_dir() and not (root / "step-1").exists()
    assert ckpt.latest_checkpoint(tmp_path / "run") is None
    assert [p.name for p in ckpt.remove_incomplete(tmp_path / "run")] == ["step-1.tmp"]


def test_convert_sharded_checkpoint_to_model_folder(tmp_path, capsys):
    model, _, path = small_model_checkpoint(tmp_path / "run")
    shards = ckpt.consolidated_model_state(path)
    assert shards.keys() == model.state_dict().keys()  # tied names come back from shards.json
    assert cli_main(["convert", "--from", "checkpoint", "--to", "modaloom", str(path), str(tmp_path / "m")]) == 0
    assert "training checkpoint" in capsys.readouterr().out
    loaded = load(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # not a step folder: refused, and the message points at the run's latest checkpoint
    assert cli_main(["convert", "--from", "checkpoint", "--to", "modaloom", str(tmp_path / "run"),
                     str(tmp_path / "x")]) != 0
    assert "step-1" in capsys.readouterr().err


def test_missing_shard_is_a_checkpoint_error(tmp_path):
    _, _, path = small_model_checkpoint(tmp_path / "run")
    shutil.rmtree(path / ckpt.MODEL_SHARDS)
    (path / ckpt.MODEL_SHARDS).mkdir()
    with pytest.raises(CheckpointError, match="shard file is missing"):
        ckpt.consolidated_model_state(path)


def fsdp_pretrain(config, data, out) -> None:
    """`modaloom pretrain` on 2 FSDP processes (torchrun) writing sharded checkpoints into ``out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "modaloom.cli.main", "pretrain", "--config", str(config), "--data", str(data),
           "--out", str(out), "train.parallel=fsdp", "train.checkpoint_format=sharded"]
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]


def test_fsdp_pretrain_cli_exports_and_converts_a_sharded_checkpoint(tmp_path):
    from tests.train.data_helpers import tiny_bert_config, write_dataset

    data = write_dataset(tmp_path / "data", documents=40)
    config = tiny_bert_config(tmp_path / "c.yaml", layers=2, train={"steps": 2})
    out = tmp_path / "out"
    fsdp_pretrain(config, data, out)
    two = step_dir(out, 2)
    assert ckpt.is_sharded_checkpoint(two)
    assert cli_main(["convert", "--from", "checkpoint", "--to", "modaloom", str(two), str(tmp_path / "m")]) == 0
    exported, converted = read_weights(out / "model" / "model.safetensors"), read_weights(tmp_path / "m" / "model.safetensors")
    assert exported.keys() == converted.keys()
    for key in exported:
        assert torch.equal(exported[key], converted[key]), key


def test_pretrain_resumes_mid_epoch_on_another_number_of_processes(tmp_path):
    """The real data loader, not the stand-in: 2 FSDP processes stop mid-epoch (sharded checkpoint), one
    process goes on with the doubled batch from the global record the two had reached together."""
    from tests.train.data_helpers import tiny_bert_config, write_dataset

    data = write_dataset(tmp_path / "data", documents=40)
    config = tiny_bert_config(tmp_path / "c.yaml", train={"steps": 2, "batch_size": 4})
    out = tmp_path / "out"
    fsdp_pretrain(config, data, out)
    two = [json.loads((step_dir(out, 2) / f"rank-{r}.json").read_text())["data"]["loader"] for r in range(2)]
    assert [(s["world_size"], s["start"], s["position"]) for s in two] == [(2, 0, 8), (2, 0, 8)]
    assert cli_main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(out), "--resume",
                     "--steps", "4", "train.batch_size=8", "train.checkpoint_format=sharded"]) == 0
    four = json.loads((step_dir(out, 4) / "rank-0.json").read_text())["data"]["loader"]
    # 16 records of the epoch's global order were read by the two processes; the one process read 16 more
    assert (four["world_size"], four["epoch"], four["start"], four["position"]) == (1, 0, 16, 16)
