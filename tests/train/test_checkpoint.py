import json

import pytest
import torch

from modaloom.errors import CheckpointError
from modaloom.train import checkpoint as ckpt
from modaloom.train.config import TrainConfig
from modaloom.train.optim import build_optimizer
from tests.train.standins import TinyRegressor


def trained(seed=0, steps=2, optimizer="adamw"):
    torch.manual_seed(seed)
    model = TinyRegressor()
    opt = build_optimizer(model, TrainConfig(lr=0.01, optimizer=optimizer))
    for _ in range(steps):
        model({"input_ids": torch.randint(0, 50, (4, 3)), "target": torch.randn(4)}).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def save(out, step, model, opt, keep_last=3, config=None):
    return ckpt.save_checkpoint(out, step, model, opt, {"skipped_steps": 0}, {"data": {"consumed": step}},
                                config, keep_last)


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_round_trip_restores_model_optimizer_and_rng(tmp_path, optimizer):
    model, opt = trained(optimizer=optimizer)
    torch.manual_seed(123)
    path = save(tmp_path, 2, model, opt)
    expected_draw = torch.rand(3)
    other, other_opt = trained(seed=5, steps=1, optimizer=optimizer)
    state, rank_state = ckpt.load_checkpoint(path, other, other_opt)
    assert state["step"] == 2 and rank_state["data"] == {"consumed": 2}
    assert torch.equal(torch.rand(3), expected_draw)
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    a_state, b_state = opt.state_dict()["state"], other_opt.state_dict()["state"]
    for idx in a_state:
        for slot, value in a_state[idx].items():
            assert torch.equal(value, b_state[idx][slot]), (idx, slot)
    assert other_opt.param_groups[0]["param_names"] == opt.param_groups[0]["param_names"]


def test_tied_weights_are_stored_once(tmp_path):
    model, opt = trained()
    model.head.weight = torch.nn.Parameter(model.embed.weight[:1].clone())  # untied: sanity
    torch.nn.Module.__setattr__(model, "alias", model.embed)
    path = save(tmp_path, 1, model, build_optimizer(model, TrainConfig()))
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
        aliases = json.loads(fh.metadata()["aliases"])
    assert "alias.weight" not in keys and aliases["alias.weight"] == "embed.weight"


def test_atomic_layout_keep_last_and_latest(tmp_path):
    model, opt = trained()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, keep_last=2)
    root = ckpt.checkpoint_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-4"]
    # a writer killed half way leaves a .tmp dir and a half-deleted dir: both ignored, then removed
    (root / "step-9.tmp").mkdir()
    (root / "step-9.tmp" / "model.safetensors").write_bytes(b"partial")
    (root / "step-2.deleting").mkdir()
    (root / "step-7").mkdir()  # no trainer_state.json: not a checkpoint
    assert ckpt.latest_checkpoint(tmp_path).name == "step-4"
    removed = {p.name for p in ckpt.remove_incomplete(tmp_path)}
    assert removed == {"step-9.tmp", "step-2.deleting"}


def test_resaving_a_step_replaces_it(tmp_path):
    model, opt = trained()
    save(tmp_path, 3, model, opt)
    save(tmp_path, 3, model, opt)
    assert [p.name for p in ckpt.checkpoint_root(tmp_path).iterdir()] == ["step-3"]


def test_other_model_config_is_refused_naming_the_difference(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 1, model, opt, config={"encoder": {"layers_num": 2, "hidden_size": 128}})
    with pytest.raises(CheckpointError, match=r"encoder.layers_num: 2 there, 4 here"):
        ckpt.load_checkpoint(path, model, opt, {"encoder": {"layers_num": 4, "hidden_size": 128}})


@pytest.mark.parametrize("saved_freeze, resumed_freeze, says", [
    (["blocks.0"], ["blocks.1"], r"frozen now: blocks.1.0.bias, blocks.1.0.weight \(2\); trained now: blocks.0.0.bias"),
    ([], ["norm"], r"frozen now: norm.bias, norm.weight \(2\)\)"),
    (["head"], [], r"\(trained now: head.bias, head.weight \(2\)\)"),
])
def test_resuming_with_other_frozen_parameters_is_refused(tmp_path, saved_freeze, resumed_freeze, says):
    from modaloom.freeze import freeze

    def frozen_run(entries):
        model = TinyRegressor()
        if entries:
            freeze(model, entries)
        return model, build_optimizer(model, TrainConfig(lr=0.01))

    model, opt = frozen_run(saved_freeze)
    path = save(tmp_path, 1, model, opt)
    assert json.loads((path / ckpt.STATE_FILE).read_text())["frozen"] == ckpt.frozen_names(model)
    with pytest.raises(CheckpointError, match=says):
        ckpt.load_checkpoint(path, *frozen_run(resumed_freeze))
    ckpt.load_checkpoint(path, *frozen_run(saved_freeze))  # the same freeze resumes


def test_shape_mismatch_is_refused(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 1, model, opt)
    small = TinyRegressor(hidden=8)
    with pytest.raises(CheckpointError, match="shape mismatch: .*embed.weight"):
        ckpt.load_checkpoint(path, small, build_optimizer(small, TrainConfig()))


def test_corrupt_file_is_a_checkpoint_error(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 1, model, opt)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        ckpt.load_checkpoint(path, model, opt)
