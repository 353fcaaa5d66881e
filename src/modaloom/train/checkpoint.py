"""Training checkpoints: everything needed to resume exactly, written atomically, no pickle.

A checkpoint is a directory ``<out>/checkpoints/step-N/`` holding

- ``model.safetensors`` and ``config.json``: the weights (tied tensors stored once) and the model config;
- ``optimizer.safetensors`` + ``optimizer.json``: optimizer state tensors keyed ``<param name>/<slot>``,
  and the parameter groups and non-tensor state;
- ``rank-R.safetensors`` + ``rank-R.json`` for every rank: torch RNG states, Python and NumPy RNG states,
  the data-loader position, the state of the Trainer's after-step hooks (tensors keyed ``state/...``);
- ``trainer_state.json`` (written last): step, grad-scaler state, counters.

It is assembled in ``step-N.tmp/`` and renamed to ``step-N/`` in one step (``atomic.swap_directory``), so a
directory named ``step-N`` is always complete; a killed writer leaves only a ``.tmp`` directory (or, when it
replaced an existing ``step-N``, a ``.step-N.old``), which ``latest`` ignores and the next run cleans up.
Old checkpoints are renamed to ``*.deleting`` before removal for the same reason.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from modaloom.atomic import atomic_write_json, old_sibling, recover_stale, swap_directory
from modaloom.errors import CheckpointError
from modaloom.model_config import CONFIG_FORMAT, model_section_from_saved
from modaloom.weights import (
    check_state,
    read_tensors,
    read_weights,
    save_weights,
    tied_aliases,
    write_tensors,
)

STEP_DIR = re.compile(r"^step-(\d+)$")
STALE_SWAP = re.compile(r"^\.(step-\d+)\.old$")  # atomic.old_sibling of a step dir
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1
RANK_TENSOR_PREFIX = "state/"  # rank tensors other than RNG states


# ---------------------------------------------------------------- files


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data, indent=1, sort_keys=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


# ---------------------------------------------------------------- locating


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint, oldest first; temp and half-deleted dirs are ignored."""
    root = checkpoint_root(out_dir)
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = STEP_DIR.match(entry.name)
            if match and entry.is_dir() and (entry / STATE_FILE).is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = complete_checkpoints(out_dir)
    return found[-1][1] if found else None


def remove_incomplete(out_dir: str | Path) -> list[Path]:
    """Clean up after killed writers; returns what was removed.

    ``*.tmp`` and ``*.deleting`` are removed. A ``.step-N.old`` (a killed swap over an existing ``step-N``)
    is put back when ``step-N`` is missing, and removed when the complete new ``step-N`` is in place.
    """
    root = checkpoint_root(out_dir)
    removed = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.endswith((".tmp", ".deleting")):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        for entry in root.iterdir():
            match = STALE_SWAP.match(entry.name)
            if match and not recover_stale_checkpoint(root / match.group(1)):
                removed.append(entry)
    return removed


def recover_stale_checkpoint(final: Path) -> bool:
    """Put ``.step-N.old`` back when ``step-N`` is missing (True); else remove it, it is superseded (False)."""
    if not final.exists():
        return recover_stale(final)
    shutil.rmtree(old_sibling(final), ignore_errors=True)
    return False


def prune(out_dir: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints; each old one is renamed away before it is deleted."""
    found = complete_checkpoints(out_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        doomed = path.with_name(path.name + ".deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------- state pieces


def _full_options(**kw: Any) -> StateDictOptions:
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    return StateDictOptions(full_state_dict=distributed, cpu_offload=distributed, **kw)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict; on rank 0 only when FSDP-sharded."""
    return get_model_state_dict(model, options=_full_options())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as tensors ``<param>/<slot>`` plus a JSON part (groups, non-tensor slots)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, slots in osd["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}/{slot}"] = value
            else:
                scalars.setdefault(str(param), {})[slot] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]
    ]
    tuples = sorted({k for g in osd["param_groups"] for k, v in g.items() if isinstance(v, tuple)})
    return tensors, {"param_groups": groups, "scalars": scalars, "tuple_keys": tuples}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        param, slot = key.rsplit("/", 1)
        state.setdefault(param, {})[slot] = value
    for param, slots in meta["scalars"].items():
        state.setdefault(param, {}).update(slots)
    tuple_keys = set(meta.get("tuple_keys", []))
    groups = [{k: (tuple(v) if k in tuple_keys else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's torch (CPU and CUDA), NumPy and Python RNG states."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------- config check


def differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like trees, as 'key: saved -> current'."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved:
                out.append(f"{sub}: absent there, {current[key]!r} here")
            elif key not in current:
                out.append(f"{sub}: {saved[key]!r} there, absent here")
            else:
                out.extend(differences(saved[key], current[key], sub))
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [d for i, (a, b) in enumerate(zip(saved, current)) for d in differences(a, b, f"{path}.{i}")]
    return [] if saved == current else [f"{path}: {saved!r} there, {current!r} here"]


def check_same_model(ckpt: Path, model_config: dict[str, Any] | None) -> None:
    """Refuse a checkpoint made for a different model config, naming what differs."""
    if model_config is None or not (ckpt / "config.json").is_file():
        return
    saved = model_section_from_saved(read_json(ckpt / "config.json"))
    diff = differences(saved, model_config)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise CheckpointError(
            f"checkpoint {ckpt} belongs to a different model ({shown}); resume with the config it was "
            f"trained with, or start a fresh run with another --out"
        )


# ---------------------------------------------------------------- save / load


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    model_config: dict[str, Any] | None = None,
    keep_last: int = 3,
    rank: int = 0,
    world_size: int = 1,
    rank_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``step-N`` atomically (collective when distributed: every rank calls it).

    ``rank_tensors`` (this rank's, e.g. hook state) are stored beside its RNG state and come back from
    ``load_checkpoint`` as ``rank_state["tensors"]``.
    """
    from modaloom.train import distributed as dist_utils

    root = checkpoint_root(out_dir)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist_utils.barrier()

    rng_tensors, rng_meta = rng_state()
    extra = {f"{RANK_TENSOR_PREFIX}{k}": v for k, v in (rank_tensors or {}).items()}
    write_tensors(tmp / f"rank-{rank}.safetensors", {**rng_tensors, **extra})
    write_json(tmp / f"rank-{rank}.json", {"rng": rng_meta, **rank_state})

    weights = model_state(model)  # collective under FSDP
    optim = optimizer_state(model, optimizer)
    if rank == 0:
        save_weights(weights, tmp / "model.safetensors")
        if model_config is not None:
            write_json(tmp / "config.json", {"format": CONFIG_FORMAT, "model": model_config})
        opt_tensors, opt_meta = flatten_optimizer(optim)
        write_tensors(tmp / "optimizer.safetensors", opt_tensors)
        write_json(tmp / "optimizer.json", opt_meta)
    dist_utils.barrier()
    if rank == 0:
        write_json(tmp / STATE_FILE, {"format_version": FORMAT_VERSION, "step": step,
                                      "world_size": world_size, **trainer_state})
        recover_stale_checkpoint(final)
        swap_directory(tmp, final)
        prune(out_dir, keep_last)
    dist_utils.barrier()
    return final


def load_model_weights(model: nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` into a (possibly wrapped or sharded) model; shape errors name the key."""
    tensors = read_weights(ckpt / "model.safetensors")
    if not _is_sharded(model):
        # this rank's own tensors: ``model_state`` offloads a full state to rank 0 only, so on the other
        # ranks of a DDP job it is empty and every key would look unexpected
        expected = get_model_state_dict(model)
        check_state(expected, tensors, f"checkpoint {ckpt}", tied_aliases(expected))
    set_model_state_dict(model, tensors, options=_full_options())


def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimizer and this rank's RNG; return (trainer_state, rank_state)."""
    check_same_model(ckpt, model_config)
    state = read_json(ckpt / STATE_FILE)
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(
            f"checkpoint {ckpt} was written by {state.get('world_size')} processes, this run has {world_size}; "
            f"resume with the same number of processes (the data-loader position is per rank)"
        )
    load_model_weights(model, ckpt)
    opt_tensors, _ = read_tensors(ckpt / "optimizer.safetensors")
    osd = unflatten_optimizer(opt_tensors, read_json(ckpt / "optimizer.json"))
    set_optimizer_state_dict(model, optimizer, osd, options=_full_options())
    rng_tensors, _ = read_tensors(ckpt / f"rank-{rank}.safetensors")
    rank_state = read_json(ckpt / f"rank-{rank}.json")
    set_rng_state(rng_tensors, rank_state.pop("rng"))
    rank_state["tensors"] = {k[len(RANK_TENSOR_PREFIX):]: v for k, v in rng_tensors.items()
                             if k.startswith(RANK_TENSOR_PREFIX)}
    return state, rank_state
