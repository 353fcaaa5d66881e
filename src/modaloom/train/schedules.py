"""Learning-rate schedules as pure functions of the optimizer step.

A schedule maps ``(step, config)`` to a multiplier of ``config.lr``. Step 0 is the first update. Being a
pure function of the step, a schedule needs no state of its own in a checkpoint: the step is enough to
resume it exactly. Warm-up is linear from 0 (``step / warmup``), as in HuggingFace's schedules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from modaloom.registry import get, register
from modaloom.train.config import TrainConfig

Schedule = Callable[[int, TrainConfig], float]


def _warmup(step: int, warmup: int) -> float | None:
    """The warm-up multiplier while warming up, else None."""
    if step < warmup:
        return step / max(1, warmup)
    return None


def _progress(step: int, cfg: TrainConfig) -> float:
    """Fraction of the post-warm-up part done, in [0, 1]."""
    warmup = cfg.warmup
    return min(1.0, max(0.0, (step - warmup) / max(1, cfg.steps - warmup)))


def _floor(decay: float, cfg: TrainConfig) -> float:
    """Scale a 1 -> 0 decay into 1 -> min_lr_ratio."""
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


@register("scheduler", "constant")
def constant(step: int, cfg: TrainConfig) -> float:
    return 1.0


@register("scheduler", "constant_with_warmup")
def constant_with_warmup(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg.warmup)
    return 1.0 if w is None else w


@register("scheduler", "linear")
def linear(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg.warmup)
    return _floor(1.0 - _progress(step, cfg), cfg) if w is None else w


@register("scheduler", "cosine")
def cosine(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg.warmup)
    return _floor(0.5 * (1.0 + math.cos(math.pi * _progress(step, cfg))), cfg) if w is None else w


@register("scheduler", "cosine_with_restarts")
def cosine_with_restarts(step: int, cfg: TrainConfig) -> float:
    """Cosine decay restarted ``cycles`` times (hard restarts back to the peak)."""
    w = _warmup(step, cfg.warmup)
    if w is not None:
        return w
    progress = _progress(step, cfg)
    if progress >= 1.0:
        return cfg.min_lr_ratio
    phase = (cfg.cycles * progress) % 1.0
    return _floor(0.5 * (1.0 + math.cos(math.pi * phase)), cfg)


@register("scheduler", "polynomial")
def polynomial(step: int, cfg: TrainConfig) -> float:
    w = _warmup(step, cfg.warmup)
    return _floor((1.0 - _progress(step, cfg)) ** cfg.power, cfg) if w is None else w


@register("scheduler", "inverse_sqrt")
def inverse_sqrt(step: int, cfg: TrainConfig) -> float:
    """Warm up, then decay as sqrt(warmup / step) (1 / sqrt(step + 1) without warm-up)."""
    w = _warmup(step, cfg.warmup)
    if w is not None:
        return w
    if cfg.warmup == 0:
        return 1.0 / math.sqrt(step + 1)
    return math.sqrt(cfg.warmup / step)


@register("scheduler", "tristage")
def tristage(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, hold at the peak, exponential decay to ``tristage_final_scale`` (wav2vec2 style)."""
    r_warm, r_hold, _ = cfg.tristage_ratios
    warm = int(round(r_warm * cfg.steps))
    hold = int(round(r_hold * cfg.steps))
    decay = max(1, cfg.steps - warm - hold)
    if step < warm:
        return step / max(1, warm)
    if step < warm + hold:
        return 1.0
    done = min(1.0, (step - warm - hold) / decay)
    return math.exp(math.log(cfg.tristage_final_scale) * done)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate used by optimizer step ``step`` (0-based)."""
    schedule: Schedule = get("scheduler", cfg.schedule, "train.schedule")
    return cfg.lr * schedule(step, cfg)
