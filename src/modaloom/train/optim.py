"""Optimizers (torch's own AdamW, Adafactor and SGD) with weight-decay parameter groups.

Biases, norm weights and every other 1-D parameter get no weight decay; so does any parameter whose name
contains one of ``train.no_decay``. Registered under kind "optimizer"; each builder takes the parameter
groups and the TrainConfig.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modaloom.registry import get, register
from modaloom.train.config import TrainConfig

OptimizerBuilder = Callable[[list[dict[str, Any]], TrainConfig, torch.device], torch.optim.Optimizer]


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
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, weight_decay=cfg.weight_decay,
        **adamw_kernel(cfg, device, params),
    )


@register("optimizer", "adafactor")
def build_adafactor(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """torch's Adafactor (factored second moments, no first moment): little optimizer memory."""
    return torch.optim.Adafactor(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@register("optimizer", "sgd")
def build_sgd(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``train.optimizer`` over the model's trainable parameters."""
    if device is None:
        device = next(model.parameters()).device
    builder: OptimizerBuilder = get("optimizer", cfg.optimizer, "train.optimizer")
    return builder(parameter_groups(model, cfg), cfg, device)
