"""Apply activation checkpointing, DDP / FSDP2 wrapping and ``torch.compile`` to a built model.

The model definition knows nothing of these: ``parallelize`` takes a model as ``build_model`` or
``modaloom.load`` returns it and gives back what a training loop or an inference job runs. Nothing here
assumes training: checkpointing is inert without gradients, and a model with no trainable parameter
(frozen for inference) is not wrapped in DDP, which has no gradients to synchronise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from modaloom.train import distributed as dist_utils


class ParallelOptions(Protocol):
    """The three settings read here (``TrainConfig`` has them)."""

    activation_checkpointing: bool
    parallel: str
    compile: bool


@dataclass
class Parallelized:
    """``raw``: the user's model; ``model``: it wrapped for DDP / FSDP2 (optimizer, state dicts, no_sync);
    ``forward``: what to call on a batch (``model``, compiled when asked)."""

    raw: nn.Module
    model: nn.Module
    forward: Any


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each repeated block's activations in the backward pass; returns how many blocks.

    The block's ``forward`` is wrapped in place, so parameter names (and checkpoints) do not change.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = dist_utils.repeated_blocks(model)
    for block in blocks:
        original = block.forward

        @functools.wraps(original)
        def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward  # type: ignore[method-assign]
    return len(blocks)


def parallel_mode(options: ParallelOptions, model: nn.Module) -> str:
    """``parallel`` resolved: auto is ddp; ddp of a model without trainable parameters is none."""
    mode = "ddp" if options.parallel == "auto" else options.parallel
    if mode == "ddp" and not any(p.requires_grad for p in model.parameters()):
        return "none"
    return mode


def parallelize(model: nn.Module, options: ParallelOptions, info: dist_utils.DistInfo | None = None) -> Parallelized:
    """Move ``model`` to this process's device, then checkpoint, wrap and compile it as ``options`` say."""
    info = info or dist_utils.current()
    raw = model.to(info.device)
    if options.activation_checkpointing:
        apply_activation_checkpointing(raw)
    wrapped = dist_utils.wrap_model(raw, info, parallel_mode(options, raw))
    forward = torch.compile(wrapped) if options.compile else wrapped
    return Parallelized(raw=raw, model=wrapped, forward=forward)
