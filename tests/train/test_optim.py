import torch

from modaloom.train.config import TrainConfig
from modaloom.train.optim import build_optimizer, parameter_groups
from tests.train.standins import TinyRegressor


def test_biases_and_norms_are_not_decayed():
    groups = parameter_groups(TinyRegressor(), TrainConfig(weight_decay=0.1))
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert set(decay["param_names"]) == {"embed.weight", "blocks.0.0.weight", "blocks.1.0.weight", "head.weight"}
    assert "norm.weight" in no_decay["param_names"] and "head.bias" in no_decay["param_names"]


def test_name_patterns_exclude_more():
    groups = parameter_groups(TinyRegressor(), TrainConfig(no_decay=["embed"]))
    assert "embed.weight" in groups[1]["param_names"]


def test_optimizers_build_and_step():
    model = TinyRegressor()
    for name, kind in (("adamw", torch.optim.AdamW), ("adafactor", torch.optim.Adafactor), ("sgd", torch.optim.SGD)):
        opt = build_optimizer(model, TrainConfig(optimizer=name, lr=0.01))
        assert isinstance(opt, kind)
        before = model.head.weight.detach().clone()
        batch = {"input_ids": torch.randint(0, 50, (4, 3)), "target": torch.randn(4)}
        model(batch).loss.backward()
        opt.step()
        opt.zero_grad()
        assert not torch.equal(before, model.head.weight)


def test_adamw_kernel_choice():
    model = TinyRegressor()
    assert build_optimizer(model, TrainConfig()).defaults["fused"] is True
    opt = build_optimizer(model, TrainConfig(optimizer_impl="foreach"))
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
