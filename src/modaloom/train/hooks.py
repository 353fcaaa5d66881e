"""After-step hooks: per-step state beside the optimizer (momentum / EMA encoders, feature queues).

A hook is a callable ``hook(trainer)`` that the Trainer calls after every optimizer step (skipped
non-finite steps included: ``trainer.step`` has advanced, the weights have not). A hook that carries
state defines ``state_dict()`` and ``load_state_dict(state)``; that state is saved in every checkpoint,
per rank, and restored on resume, so that a resumed run continues exactly. A state dict may nest dicts
and lists; its tensors go to the rank's safetensors file, everything else to its JSON file. Restored tensors
come back on the CPU: ``load_state_dict`` copies them into the hook's own, which live where the model is. A
hook may also define ``before_step(trainer)``, called before each optimizer step's first micro-batch,
``trainer.step`` being the 0-based index of that step (``model.LossWeightClock`` hands it to the targets'
weight schedules).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from modaloom.errors import CheckpointError

TENSOR_MARK = "__tensor__"


class StepHook(Protocol):
    """Called with the Trainer after each optimizer step."""

    def __call__(self, trainer: Any) -> None: ...


def part_hooks(model: Any) -> list[Any]:
    """The hooks a model's parts ask for (a part's ``step_hooks(model)``), e.g. a moco target's momentum towers."""
    hooks: list[Any] = []
    for module in model.modules():
        make = getattr(module, "step_hooks", None)
        if callable(make):
            hooks.extend(make(model))
    return hooks


def hook_name(hook: Any) -> str:
    """A hook's ``name`` attribute, else its class name (checked on resume)."""
    return str(getattr(hook, "name", None) or type(hook).__name__)


def has_state(hook: Any) -> bool:
    return callable(getattr(hook, "state_dict", None)) and callable(getattr(hook, "load_state_dict", None))


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach()
        return {TENSOR_MARK: path}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR_MARK}:
            return tensors[value[TENSOR_MARK]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_hook_states(hooks: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(JSON entries, tensors keyed ``hooks/<index>/<path>``) for the hooks that carry state."""
    entries, tensors = [], {}
    for index, hook in enumerate(hooks):
        if has_state(hook):
            state = _split(hook.state_dict(), f"hooks/{index}", tensors)
            entries.append({"name": hook_name(hook), "index": index, "state": state})
    return entries, tensors


def load_hook_states(hooks: Sequence[Any], entries: list[dict[str, Any]], tensors: dict[str, torch.Tensor],
                     where: str) -> None:
    """Give each stateful hook its saved state; refuse a checkpoint saved with other stateful hooks."""
    stateful = [(i, hook_name(h)) for i, h in enumerate(hooks) if has_state(h)]
    saved = [(int(e["index"]), str(e["name"])) for e in entries]
    if stateful != saved:
        raise CheckpointError(
            f"checkpoint {where} holds the state of hooks {[n for _, n in saved]} but this run has stateful "
            f"hooks {[n for _, n in stateful]}; resume with the hooks the run was started with")
    for entry in entries:
        try:
            state = _join(entry["state"], tensors)
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {where}: tensor {exc} of hook {entry['name']} is missing") from None
        hooks[int(entry["index"])].load_state_dict(state)
