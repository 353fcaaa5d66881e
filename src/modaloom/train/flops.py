"""Model FLOPs per token and the machine's measured matmul peak, for model FLOPs utilisation (MFU).

FLOPs per trained token follow the PaLM appendix estimate: ``6 * N`` for the matmul weights (forward 2N,
backward 4N) plus ``12 * layers * hidden * seq`` for attention scores and weighted values. N counts the
weights of linear and convolution layers only (a table lookup is not a matmul; an output layer tied to the
word embedding is not counted), so the estimate is conservative.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from modaloom.atomic import atomic_write_json

_PEAK_CACHE: dict[str, float] = {}


def matmul_parameters(model: nn.Module) -> int:
    """Parameters used in matmuls on every token: the weights of linear and convolution layers.

    Embedding tables (however a model implements them) are not counted, nor is an output layer that
    reuses the word embedding through ``F.linear`` (it often runs on a few masked positions only).
    """
    first_names = {id(p): name for name, p in model.named_parameters()}  # a tied weight: its first name
    seen = {pid for pid, name in first_names.items() if "embed" in name.lower()}
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """(attention layers, hidden size) from ``model.config`` when it has one, else (0, 0)."""
    config = getattr(model, "config", None)
    layers = hidden = 0
    for section in ("encoder", "decoder"):
        enc = getattr(config, section, None)
        if enc is None:
            continue
        if getattr(enc, "type", "") == "dual":
            for stream in enc.streams:
                layers += stream.layers_num
                hidden = max(hidden, stream.heads_num * stream.head_dim)
        elif getattr(enc, "type", "") == "transformer":
            layers += enc.layers_num
            hidden = max(hidden, enc.heads_num * enc.head_dim)
    return layers, hidden


def flops_per_token(model: nn.Module, seq_length: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_length``."""
    layers, hidden = attention_shape(model)
    return 6.0 * matmul_parameters(model) + 12.0 * layers * hidden * seq_length


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modaloom" / "matmul_peak.json"


def _device_key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu{os.cpu_count()}-threads{torch.get_num_threads()}"
    return f"{name}|{dtype}"


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048) -> float:
    """Best achieved FLOP/s of a square matmul on ``device``.

    Measured once per process and combined with the best figure cached for this machine (the maximum of
    the two is kept), so that a measurement taken while the machine was busy cannot stick: a peak that is
    too low would report an MFU above 1.
    """
    key = _device_key(device, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    peak = max(2.0 * size**3 / best, float(cached.get(key, 0.0)))
    _PEAK_CACHE[key] = peak
    cached[key] = peak
    with contextlib.suppress(OSError):
        atomic_write_json(path, cached, indent=1)
    return peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
