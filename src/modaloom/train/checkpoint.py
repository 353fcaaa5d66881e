"""Training checkpoints: everything needed to resume exactly, written atomically, no pickle.

A checkpoint is a directory ``<out>/checkpoints/step-N/`` holding

- ``model.safetensors`` and ``config.json``: the weights (tied tensors stored once) and the model config;
- ``optimizer.safetensors`` + ``optimizer.json``: optimizer state tensors keyed ``<param name>/<slot>``,
  and the parameter groups and non-tensor state;
- ``rank-R.safetensors`` + ``rank-R.json`` for every rank: torch RNG states, Python and NumPy RNG states,
  the data-loader position, the state of the Trainer's after-step hooks (tensors keyed ``state/...``);
- ``trainer_state.json`` (written last): step, grad-scaler state, counters.

A *sharded* checkpoint (``train.checkpoint_format``) holds, instead of ``model.safetensors`` and
``optimizer.safetensors``, the folders ``model-shards/`` and ``optimizer-shards/`` written by
``torch.distributed.checkpoint`` (DCP): every rank writes its own part of the (FSDP2-sharded) tensors as a
safetensors file whose header records where that part lies, so nothing is gathered on one process and
nothing is pickled. ``shards.json`` lists the tied names stored once. Any number of processes reads it
back (DCP reshards on load), and ``consolidated_model_state`` rebuilds the full weights on one process.

It is assembled in ``step-N.tmp/`` (by every rank, for a sharded one) and renamed to ``step-N/`` in one step (``atomic.swap_directory``), so a
directory named ``step-N`` is always complete; a killed writer leaves only a ``.tmp`` directory (or, when it
replaced an existing ``step-N``, a ``.step-N.old``), which ``latest`` ignores and the next run cleans up.
Old checkpoints are renamed to ``*.deleting`` before removal for the same reason.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

from modaloom.atomic import atomic_write_json, old_sibling, recover_stale, swap_directory
from modaloom.errors import CheckpointError
from modaloom.lora import has_lora, merge_lora_state
from modaloom.model_config import CONFIG_FORMAT, model_section_from_saved
from modaloom.weights import (
    check_state,
    load_weights_checked,
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
FORMATS = ("full", "sharded")
MODEL_SHARDS = "model-shards"
OPTIMIZER_SHARDS = "optimizer-shards"
SHARDS_FILE = "shards.json"


# ---------------------------------------------------------------- files



def _state_dict_api() -> Any:
    """torch.distributed.checkpoint.state_dict, imported on first use: the package pulls in sympy and more
    (about 50 MB resident), which a run should not carry from start-up to its first checkpoint."""
    import torch.distributed.checkpoint.state_dict as api

    return api

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
    return _state_dict_api().StateDictOptions(full_state_dict=distributed, cpu_offload=distributed, **kw)


# module classes under which parameter names or tensors differ from a plain module's (the DCP API handles them)
WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel", "OptimizedModule", "CheckpointWrapper")


def is_plain(model: nn.Module) -> bool:
    """One process, no wrapper module, no sharded tensor: the DCP state-dict API would return
    ``model.state_dict()`` and the optimizer's state keyed by parameter name, which ``model_state`` and
    ``optimizer_state`` then build directly. The API imports torch._dynamo and sympy (~73 MiB resident) on first
    use, which an eager single-process run otherwise never loads (docs/training.md, "Memory on CPU")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    return not any(type(m).__name__ in WRAPPERS or type(m).__name__.startswith("FSDP") for m in model.modules()) \
        and not _is_sharded(model)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Optimizer parameter index -> the model's name for it (the first name of a tied parameter)."""
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    return {index[id(p)]: name for name, p in model.named_parameters() if id(p) in index}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict; on rank 0 only when FSDP-sharded."""
    if is_plain(model):
        return model.state_dict()
    return _state_dict_api().get_model_state_dict(model, options=_full_options())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter name (DCP's layout), full on rank 0 when sharded."""
    if is_plain(model) and optimizer.state:  # (DCP first initialises an empty state with a zero step)
        names = _parameter_names(model, optimizer)
        osd = optimizer.state_dict()
        return {"state": {names[i]: slots for i, slots in osd["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}
    return _state_dict_api().get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
    """Restore ``optimizer_state``'s layout into ``optimizer`` (resharded by DCP when the model is sharded)."""
    if not is_plain(model):
        _state_dict_api().set_optimizer_state_dict(model, optimizer, osd, options=_full_options())
        return
    ids = {name: i for i, name in _parameter_names(model, optimizer).items()}
    unknown = [name for name in osd["state"] if name not in ids]
    if unknown:
        raise CheckpointError(f"the optimizer state names parameters this model does not train: {unknown[:4]}")
    optimizer.load_state_dict({
        "state": {ids[name]: slots for name, slots in osd["state"].items()},
        "param_groups": [{**g, "params": [ids[name] for name in g["params"]]} for g in osd["param_groups"]]})


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


def frozen_names(model: nn.Module) -> list[str]:
    """The parameters a run keeps fixed (``train.freeze``, LoRA's base weights), named as in the user's model."""
    from modaloom.train.distributed import unwrap

    return sorted(name for name, p in unwrap(model).named_parameters() if not p.requires_grad)


def check_same_frozen(ckpt: Path, saved: list[str] | None, model: nn.Module) -> None:
    """Refuse to resume with other parameters frozen than the checkpoint's run (its optimizer state would
    not fit them), naming a few that differ. Checkpoints written before this check (no list) pass."""
    if saved is None:
        return
    current = frozen_names(model)
    if saved == current:
        return
    now_frozen, now_trained = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    parts = [f"{label} now: {', '.join(names[:4])}{' ...' * (len(names) > 4)} ({len(names)})"
             for label, names in (("frozen", now_frozen), ("trained", now_trained)) if names]
    raise CheckpointError(
        f"checkpoint {ckpt} was trained with other frozen parameters ({'; '.join(parts)}); resume with the "
        f"train.freeze and train.lora it was trained with, or start a fresh run (another --out, or --init-from "
        f"its model) to train other parts")


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


# ---------------------------------------------------------------- sharded (DCP) pieces


def is_sharded_checkpoint(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds DCP shards (``train.checkpoint_format=sharded``) rather than full files."""
    return (Path(ckpt) / MODEL_SHARDS).is_dir()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (the tensor itself when plain): what tied names share."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silence DCP's warning that one process without a process group saves alone: that is meant here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_save(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Every rank writes its shards of ``tensors`` into ``folder`` (safetensors with DCP offsets)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    writer = dcp.HuggingFaceStorageWriter(str(folder), save_distributed=True)
    no_dist = not (dist.is_available() and dist.is_initialized())
    with _single_process_quiet():
        dcp.save(tensors, storage_writer=writer, no_dist=no_dist)


def shard_metadata(folder: Path, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Name -> DCP TensorStorageMetadata of the shards in ``folder``, refused unless every tensor of
    ``shapes`` (the full shapes rank 0 recorded) is there whole, so a lost rank's file cannot go unnoticed
    (DCP alone would see a smaller tensor, or leave its rows uninitialised)."""
    import torch.distributed.checkpoint as dcp

    try:
        saved = dcp.HuggingFaceStorageReader(str(folder)).read_metadata().state_dict_metadata
    except Exception as exc:  # an unreadable or corrupt shard file
        raise CheckpointError(f"cannot read the shards in {folder}: {exc}") from None
    for key, shape in shapes.items():
        meta = saved.get(key)
        covered = sum(math.prod(chunk.sizes) for chunk in meta.chunks) if meta is not None else 0
        if meta is None or list(meta.size) != list(shape) or covered != math.prod(shape):
            raise CheckpointError(f"{folder}: the shards hold {covered} of the {math.prod(shape)} values of {key}; "
                                  f"a rank's shard file is missing, the checkpoint is damaged")
    return saved


def _dcp_load(tensors: dict[str, torch.Tensor], folder: Path, shapes: dict[str, list[int]],
              no_dist: bool = False) -> None:
    """Fill ``tensors`` (plain or DTensor, any sharding) in place from the shards in ``folder``;
    ``no_dist``: on this process alone, even when a process group exists."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    no_dist = no_dist or not (dist.is_available() and dist.is_initialized())
    shard_metadata(folder, shapes)
    missing = sorted(set(tensors) - set(shapes))
    if missing:
        raise CheckpointError(f"{folder} lacks {len(missing)} tensors this run needs, e.g. {', '.join(missing[:4])}; "
                              f"was it written for another model or optimizer?")
    wrong = [f"{k}: saved {tuple(shapes[k])}, here {tuple(v.shape)}" for k, v in tensors.items()
             if tuple(shapes[k]) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{folder} does not match this run: {'; '.join(wrong[:4])}")
    with _single_process_quiet():
        dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(folder)), no_dist=no_dist)


def _save_sharded(tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """Model and optimizer as DCP shards; each rank writes its own part, rank 0 the JSON beside them
    (``shards.json``: tied names, and the full shape of every tensor to check the shards against)."""
    weights, optim = _state_dict_api().get_state_dict(model, optimizer)  # sharded (DTensor) under FSDP2, plain otherwise
    aliases = tied_aliases({k: _local(v) for k, v in weights.items()})
    stored = {k: v for k, v in weights.items() if k not in aliases}
    _dcp_save(stored, tmp / MODEL_SHARDS)
    opt_tensors, opt_meta = flatten_optimizer(optim)
    _dcp_save(opt_tensors, tmp / OPTIMIZER_SHARDS)
    if rank == 0:
        shapes = {name: {k: list(v.shape) for k, v in part.items()}
                  for name, part in (("model", stored), ("optimizer", opt_tensors))}
        write_json(tmp / SHARDS_FILE, {"aliases": aliases, "shapes": shapes})
        write_json(tmp / "optimizer.json", opt_meta)


def _load_sharded(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read DCP shards into this run's model and optimizer, whatever their sharding (DCP reshards)."""
    weights, optim = _state_dict_api().get_state_dict(model, optimizer)  # targets; the optimizer state is initialised
    index = read_json(ckpt / SHARDS_FILE)
    aliases = index["aliases"]
    _dcp_load({k: v for k, v in weights.items() if k not in aliases}, ckpt / MODEL_SHARDS, index["shapes"]["model"])
    for alias, stored in aliases.items():
        if alias in weights and stored in weights:
            weights[alias] = weights[stored]  # the name stored once gives both their value
    opt_tensors, _ = flatten_optimizer(optim)
    _dcp_load(opt_tensors, ckpt / OPTIMIZER_SHARDS, index["shapes"]["optimizer"])
    osd = unflatten_optimizer(opt_tensors, read_json(ckpt / "optimizer.json"))
    _state_dict_api().set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=osd)


def consolidated_model_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """The full weights of a checkpoint (sharded or not) on this one process, tied names included, LoRA
    adapters merged into their base weights (a plain model's keys).

    Needs no process group and no torchrun: a sharded checkpoint is read with DCP's single-process path.
    """
    ckpt = Path(ckpt)
    if not is_sharded_checkpoint(ckpt):
        return merge_lora_state(read_weights(ckpt / "model.safetensors"))
    index = read_json(ckpt / SHARDS_FILE)
    shapes = index["shapes"]["model"]
    saved = shard_metadata(ckpt / MODEL_SHARDS, shapes)
    state = {k: torch.empty(shape, dtype=saved[k].properties.dtype) for k, shape in shapes.items()}
    _dcp_load(state, ckpt / MODEL_SHARDS, shapes, no_dist=True)
    for alias, stored in index["aliases"].items():
        state[alias] = state[stored]
    return merge_lora_state(state)


def write_model_folder(ckpt: str | Path, folder: str | Path) -> None:
    """``config.json`` + ``model.safetensors`` of ``ckpt`` into ``folder`` (a sharded one consolidated, LoRA
    adapters merged)."""
    ckpt, folder = Path(ckpt), Path(folder)
    if not (ckpt / "config.json").is_file():
        raise CheckpointError(f"{ckpt} has no config.json: it was saved without a model config")
    if is_sharded_checkpoint(ckpt) or has_lora(safetensors_keys(ckpt / "model.safetensors")):
        save_weights(consolidated_model_state(ckpt), folder / "model.safetensors")
    else:
        shutil.copyfile(ckpt / "model.safetensors", folder / "model.safetensors")
    shutil.copyfile(ckpt / "config.json", folder / "config.json")


def safetensors_keys(path: Path) -> dict[str, None]:
    """The tensor names of a safetensors file, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict.fromkeys(handle.keys())
    except FileNotFoundError:
        raise CheckpointError(f"no weights file at {path}") from None


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
    sharded: bool = False,
) -> Path:
    """Write ``step-N`` atomically (collective when distributed: every rank calls it).

    ``rank_tensors`` (this rank's, e.g. hook state) are stored beside its RNG state and come back from
    ``load_checkpoint`` as ``rank_state["tensors"]``. ``sharded``: model and optimizer as DCP shards, every
    rank writing its own; otherwise gathered and written whole by rank 0.
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

    if rank == 0 and model_config is not None:
        write_json(tmp / "config.json", {"format": CONFIG_FORMAT, "model": model_config})
    if sharded:
        _save_sharded(tmp, model, optimizer, rank)
    else:
        weights = model_state(model)  # collective under FSDP
        optim = optimizer_state(model, optimizer)
        if rank == 0:
            save_weights(weights, tmp / "model.safetensors")
            opt_tensors, opt_meta = flatten_optimizer(optim)
            write_tensors(tmp / "optimizer.safetensors", opt_tensors)
            write_json(tmp / "optimizer.json", opt_meta)
    dist_utils.barrier()  # every rank's files are written: only now may the folder become step-N
    if rank == 0:
        write_json(tmp / STATE_FILE, {"format_version": FORMAT_VERSION, "step": step, "world_size": world_size,
                                      "checkpoint_format": FORMATS[sharded], "frozen": frozen_names(model),
                                      **trainer_state})
        recover_stale_checkpoint(final)
        swap_directory(tmp, final)
        prune(out_dir, keep_last)
    dist_utils.barrier()
    return final


def load_model_weights(model: nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` into a (possibly wrapped or sharded) model; shape errors name the key."""
    tensors = read_weights(ckpt / "model.safetensors")
    if is_plain(model):  # checked and copied as any weights file is, without the DCP API
        load_weights_checked(model, tensors, f"checkpoint {ckpt}")
        return
    if not _is_sharded(model):
        # this rank's own tensors: ``model_state`` offloads a full state to rank 0 only, so on the other
        # ranks of a DDP job it is empty and every key would look unexpected
        expected = _state_dict_api().get_model_state_dict(model)
        check_state(expected, tensors, f"checkpoint {ckpt}", tied_aliases(expected))
    _state_dict_api().set_model_state_dict(model, tensors, options=_full_options())


def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def source_rank(rank: int, saved_world_size: int) -> int:
    """Whose saved per-rank state (RNG, data position, hooks) this rank resumes from: its own when the
    checkpoint has it, else rank 0's (a run resumed on more processes than wrote the checkpoint)."""
    return rank if rank < saved_world_size else 0


def load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimizer and this rank's RNG; return (trainer_state, rank_state).

    Another number of processes than the writer's is accepted: model and optimizer reshard (DCP, or the
    full state dict), and the per-rank state comes from ``source_rank``; a rank that did not exist then
    continues rank 0's RNG stream reseeded by its rank, so ranks draw different dropout masks.
    """
    check_same_model(ckpt, model_config)
    state = read_json(ckpt / STATE_FILE)
    check_same_frozen(ckpt, state.get("frozen"), model)
    if is_sharded_checkpoint(ckpt):
        _load_sharded(ckpt, model, optimizer)
    else:
        load_model_weights(model, ckpt)
        opt_tensors, _ = read_tensors(ckpt / "optimizer.safetensors")
        osd = unflatten_optimizer(opt_tensors, read_json(ckpt / "optimizer.json"))
        load_optimizer_state(model, optimizer, osd)
    source = source_rank(rank, int(state.get("world_size", 1)))
    rng_tensors, _ = read_tensors(ckpt / f"rank-{source}.safetensors")
    rank_state = read_json(ckpt / f"rank-{source}.json")
    set_rng_state(rng_tensors, rank_state.pop("rng"))
    if source != rank:
        seed = int(torch.randint(0, 2**31, (1,)).item()) + rank
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    rank_state["tensors"] = {k[len(RANK_TENSOR_PREFIX):]: v for k, v in rng_tensors.items()
                             if k.startswith(RANK_TENSOR_PREFIX)}
    return state, rank_state
