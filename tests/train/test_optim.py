import copy

import pytest
import torch

from modaloom.errors import ConfigError
from modaloom.train.config import TrainConfig
from modaloom.train.optim import AdamWNoBiasCorrection, build_optimizer, parameter_groups
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


def _one_param_step(opt_cls_kwargs: dict, grads: list[float], wd: float = 0.0) -> torch.Tensor:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdamWNoBiasCorrection([param], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, **opt_cls_kwargs)
    for g in grads:
        param.grad = torch.tensor([g, -g])
        opt.step()
    return param.detach()


def test_adamw_without_bias_correction_matches_a_hand_computed_update():
    # step 1: m = 0.1 g, v = 0.001 g^2, so the update is lr * 0.1 / sqrt(0.001) = 0.3162 lr per unit sign
    # (torch's AdamW would move by lr): the ~3x larger early steps of TencentPretrain / original BERT
    for kwargs in ({"foreach": True}, {"foreach": False}):
        after = _one_param_step(kwargs, [0.5])
        step1 = 0.1 * (0.1 * 0.5) / ((0.001 * 0.25) ** 0.5 + 1e-8)
        assert torch.allclose(after, torch.tensor([1.0 - step1, -2.0 + step1]), atol=1e-6)
        # step 2 with decoupled weight decay 0.01: p *= 1 - lr * wd first, then the raw-moment update
        after = _one_param_step(kwargs, [0.5, 0.2], wd=0.01)
        p = 1.0 * (1 - 0.1 * 0.01) - step1
        m, v = 0.9 * 0.05 + 0.1 * 0.2, 0.999 * 0.00025 + 0.001 * 0.04
        p = p * (1 - 0.1 * 0.01) - 0.1 * m / (v ** 0.5 + 1e-8)
        assert abs(after[0].item() - p) < 1e-6


def test_adamw_without_bias_correction_is_built_from_the_config_and_resumes():
    torch.manual_seed(0)
    model = TinyRegressor(dropout=0.0)
    batch = {"input_ids": torch.randint(0, 50, (4, 3)), "target": torch.randn(4)}
    opts = {impl: build_optimizer(model, TrainConfig(adam_bias_correction=False, optimizer_impl=impl))
            for impl in ("auto", "foreach", "loop")}
    assert all(isinstance(o, AdamWNoBiasCorrection) for o in opts.values())
    assert opts["auto"].defaults["foreach"] and not opts["loop"].defaults["foreach"]
    # torch's AdamW state layout: a state dict saved after a step loads into a fresh optimizer and steps on
    # exactly as the original does
    twin = TinyRegressor(dropout=0.0)
    twin.load_state_dict(model.state_dict())
    first = build_optimizer(model, TrainConfig(adam_bias_correction=False))
    model(batch).loss.backward()
    first.step()
    first.zero_grad()
    twin.load_state_dict(model.state_dict())
    second = build_optimizer(twin, TrainConfig(adam_bias_correction=False))
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as from a file: no shared tensors
    assert set(first.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    for m, opt in ((model, first), (twin, second)):
        m(batch).loss.backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_adamw_bias_correction_option_is_checked():
    with pytest.raises(ConfigError, match="no fused kernel"):
        TrainConfig(adam_bias_correction=False, optimizer_impl="fused").validate()
    TrainConfig(adam_bias_correction=False, optimizer="sgd", optimizer_impl="fused").validate()  # adamw only
