"""Optimizers (torch's own AdamW, Adafactor and SGD) with weight-decay parameter groups.

``train.adam_bias_correction=false`` swaps torch's AdamW for ``AdamWNoBiasCorrection`` (original BERT and
TencentPretrain behaviour: ``p -= lr * m / (sqrt(v) + eps)`` with the raw moving averages), for runs that
must match those recipes at their learning rates; torch's AdamW has no switch for it.

Biases, norm weights and every other 1-D parameter get no weight decay; so does any parameter whose name
contains one of ``train.no_decay``. Registered under kind "optimizer"; each builder takes the parameter
groups and the TrainConfig.

Runs that do not compile (``train.compile=false``) get each optimizer as its ``eager_optimizer_class``: torch's
class without the wrappers that torch.optim puts around ``step`` and its bookkeeping methods for torch.compile,
which import torch._dynamo and sympy (~73 MiB resident) the first time they run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modaloom.registry import get, register
from modaloom.train.config import TrainConfig

OptimizerBuilder = Callable[[list[dict[str, Any]], TrainConfig, torch.device], torch.optim.Optimizer]

# Optimizer methods that torch wraps in torch._dynamo.disable (``step`` is wrapped in graph breaks instead)
DYNAMO_WRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_EAGER_CLASSES: dict[type, type] = {}


def eager_optimizer_class(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of ``cls`` whose ``step`` and ``DYNAMO_WRAPPED`` methods are the functions under torch's
    torch.compile wrappers: same arithmetic, state, hooks and ``isinstance``, without importing torch._dynamo.

    Those wrappers import torch._dynamo (and sympy: ~73 MiB resident, ``benchmarks/memory_breakdown.py``) on
    first use although an eager step never traces; ``step`` keeps the wrapper's one effect in eager mode, grad
    mode set to the optimizer's ``differentiable`` flag (off unless asked for).
    """
    if cls not in _EAGER_CLASSES:
        raw_step = inspect.unwrap(cls.step)

        def step(self: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
            with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
                return raw_step(self, closure)

        attrs: dict[str, Any] = {name: inspect.unwrap(getattr(cls, name)) for name in DYNAMO_WRAPPED}
        attrs.update(step=step, __module__=__name__, __doc__=f"{cls.__name__} without torch.compile's wrappers "
                     "(eager runs).")
        _EAGER_CLASSES[cls] = type(f"Eager{cls.__name__}", (cls,), attrs)
    return _EAGER_CLASSES[cls]


def optimizer_class(cls: type[torch.optim.Optimizer], cfg: TrainConfig) -> type[torch.optim.Optimizer]:
    """``cls`` itself for compiled runs (torch.compile needs its wrappers), else its eager subclass."""
    return cls if cfg.compile else eager_optimizer_class(cls)


def is_no_decay(name: str, param: torch.Tensor, patterns: list[str]) -> bool:
    """Biases, norms and 1-D tensors are not decayed; nor are names matching a pattern."""
    lowered = name.lower()
    return param.ndim < 2 or any(p.lower() in lowered for p in patterns)


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Two groups, decayed and not; each keeps its parameter names (for readable checkpoints)."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param, cfg.no_decay) else decay).append((name, param))
    groups = []
    for members, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
        if members:
            groups.append({
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                "weight_decay": wd,
            })
    return groups


class AdamWNoBiasCorrection(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) without bias correction of the moment estimates.

    Per step: ``p *= 1 - lr * wd``; ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr * m / (sqrt(v) + eps)``. Its state (``step``, ``exp_avg``, ``exp_avg_sq``) has torch's AdamW
    layout, so checkpoints load into either. ``foreach`` runs the multi-tensor kernels, else a loop.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, foreach: bool = True) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params, defaults)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], ...]:
        params, grads, avgs, avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamWNoBiasCorrection does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            avgs.append(state["exp_avg"])
            avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, avgs, avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, avgs, avg_sqs, steps = self._init_group(group)
            if not params:
                continue
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if group["foreach"]:
                torch._foreach_add_(steps, 1.0)
                if wd:
                    torch._foreach_mul_(params, 1.0 - lr * wd)
                torch._foreach_mul_(avgs, beta1)
                torch._foreach_add_(avgs, grads, alpha=1.0 - beta1)
                torch._foreach_mul_(avg_sqs, beta2)
                torch._foreach_addcmul_(avg_sqs, grads, grads, value=1.0 - beta2)
                denom = torch._foreach_sqrt(avg_sqs)
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(params, avgs, denom, value=-lr)
                continue
            for p, g, m, v, t in zip(params, grads, avgs, avg_sqs, steps):
                t.add_(1.0)
                if wd:
                    p.mul_(1.0 - lr * wd)
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-lr)
        return loss


def adamw_kernel(cfg: TrainConfig, device: torch.device, params: list[torch.Tensor]) -> dict[str, bool]:
    """Fused AdamW where torch supports it (CPU and CUDA float tensors), else foreach."""
    impl = cfg.optimizer_impl
    if impl == "auto":
        floating = all(p.is_floating_point() for p in params)
        impl = "fused" if floating and device.type in ("cpu", "cuda") else "foreach"
    if impl == "fused":
        return {"fused": True}
    return {"foreach": impl == "foreach"}


@register("optimizer", "adamw")
def build_adamw(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for g in groups for p in g["params"]]
    if not cfg.adam_bias_correction:
        return optimizer_class(AdamWNoBiasCorrection, cfg)(
            groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, weight_decay=cfg.weight_decay,
            foreach=cfg.optimizer_impl != "loop")
    return optimizer_class(torch.optim.AdamW, cfg)(
        groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, weight_decay=cfg.weight_decay,
        **adamw_kernel(cfg, device, params),
    )


@register("optimizer", "adafactor")
def build_adafactor(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """torch's Adafactor (factored second moments, no first moment): little optimizer memory."""
    return optimizer_class(torch.optim.Adafactor, cfg)(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                       foreach=True)


@register("optimizer", "sgd")
def build_sgd(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    return optimizer_class(torch.optim.SGD, cfg)(groups, lr=cfg.lr, momentum=cfg.momentum,
                                                 weight_decay=cfg.weight_decay, foreach=True)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``train.optimizer`` over the model's trainable parameters."""
    if device is None:
        device = next(model.parameters()).device
    builder: OptimizerBuilder = get("optimizer", cfg.optimizer, "train.optimizer")
    return builder(parameter_groups(model, cfg), cfg, device)
