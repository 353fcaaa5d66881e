"""What the Trainer asks of a task: the loss of a step, per-example evaluation outputs, their reduction.

Evaluation is a reduction over per-example outputs: ``eval_step(model, batch)`` returns a dict of tensors
(or lists) whose first dimension is the batch's examples; the Trainer concatenates them over all batches
and all ranks (``gather_outputs``) and hands the whole set to ``reduce(outputs)``. Accuracy, F1, BLEU,
WER or Recall@K computed there are exact over the set, whatever the batch sizes and the number of ranks.

``ModelSteps`` is the default, and the base of every task (``modaloom.tasks.base.Task``): the loss and
metrics the model returns, and for evaluation one row per batch (its loss and metrics) averaged, i.e. the
mean over evaluation batches of all ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch

from modaloom import collectives
from modaloom.batch import Batch, to_device
from modaloom.errors import DataError

Outputs = dict[str, Any]  # key -> tensor (first dim = examples) or list (one item per example)


class TaskSteps(Protocol):
    """The three functions the Trainer calls (``modaloom.tasks.base.Task`` implements them)."""

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]: ...

    def eval_step(self, model: Any, batch: Batch) -> Outputs: ...

    def reduce(self, outputs: Outputs) -> dict[str, float]: ...


class ModelSteps:
    """The defaults: ``model(batch).loss`` and ``.metrics``; evaluation = mean over batches of them."""

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The step's loss (None when the model computed none) and its detached scalar metrics."""
        output = model(batch)
        return output.loss, dict(getattr(output, "metrics", {}) or {})

    def eval_step(self, model: Any, batch: Batch) -> Outputs:
        """One row per batch: ``loss`` and every metric of the model, each of shape (1,)."""
        output = model(batch)
        values = dict(getattr(output, "metrics", {}) or {})
        if output.loss is not None:
            values["loss"] = output.loss
        return {k: v.detach().float().reshape(1) for k, v in values.items()}

    def reduce(self, outputs: Outputs) -> dict[str, float]:
        """The mean of every key over its rows (a key absent from some batches: over those that had it)."""
        return {k: float(torch.as_tensor(v).double().mean()) for k, v in outputs.items() if len(v)}


def concat_outputs(parts: Sequence[Outputs]) -> Outputs:
    """Per-batch outputs joined along the first dimension, key by key (tensors on the CPU)."""
    joined: dict[str, list[Any]] = {}
    for part in parts:
        for key, value in part.items():
            joined.setdefault(key, []).append(value)
    out: Outputs = {}
    for key, values in joined.items():
        if all(isinstance(v, torch.Tensor) for v in values):
            tensors = [v.detach().cpu() for v in values]
            if any(t.ndim == 0 for t in tensors):
                raise DataError(f"evaluation output {key!r} is a scalar; eval_step must return per-example "
                                f"tensors whose first dimension is the batch's examples")
            out[key] = torch.cat(tensors)
        elif all(isinstance(v, (list, tuple)) for v in values):
            out[key] = [item for v in values for item in v]
        else:
            kinds = sorted({type(v).__name__ for v in values})
            raise DataError(f"evaluation output {key!r} mixes {kinds}; return a tensor or a list for every batch")
    return out


def gather_outputs(parts: Sequence[Outputs]) -> Outputs:
    """This rank's per-batch outputs concatenated, then every rank's in rank order (a collective call)."""
    every = collectives.all_gather_objects(concat_outputs(parts))
    return concat_outputs([o for o in every if o])


@torch.no_grad()
def collect_outputs(steps: TaskSteps, model: Any, loader: Iterable[Batch] | None, device: torch.device,
                    max_batches: int = 0,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Outputs:
    """``steps.eval_step`` over ``loader`` (at most ``max_batches`` per rank, 0 = all) with the model in eval
    mode, gathered over batches and ranks (every rank must call it; every rank receives the whole set)."""
    parts: list[Outputs] = []
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        for i, batch in enumerate(loader or ()):
            if max_batches and i >= max_batches:
                break
            with autocast():
                parts.append(steps.eval_step(model, to_device(batch, device)))
    finally:
        if module is not None:
            module.train(was_training)
    return gather_outputs(parts)
