"""torchrun integration: process-group setup, DDP / FSDP2 wrapping, rank-0 helpers, feature gathering.

Nothing here is a distributed engine of its own: it reads the environment torchrun sets (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT), calls
``torch.distributed.init_process_group`` (gloo on CPU, nccl on CUDA) and wraps the model in torch's DDP or
FSDP2 (``fully_shard``). Two checks serve multi-node and elastic jobs: ``restart_count`` (has torchrun
restarted the workers? then the job resumes its latest checkpoint) and ``check_shared_folder`` (every
node must see the one output folder, where all ranks assemble each checkpoint).

Under torchrun's agent store (``TORCHELASTIC_USE_AGENT_STORE=True``, the default of its c10d rendezvous)
the agent keeps one TCPStore for every round of workers, so keys the process group wrote in a round that
was killed are still there when torchrun restarts the workers: a restarted rank could read its peer's old
gloo address and fail with "Connection refused" or wait forever (pytorch issue 135712). ``setup`` therefore
builds the process group on a store of its own, hosted by rank 0 on a fresh port that it announces through
the agent's store; a peer that reads the announcement of a dead round cannot connect to it, and reads again.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from modaloom.errors import ConfigError

RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"
AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"
STORE_KEY = "modaloom/process-group-store"
STORE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device(local_rank: int = 0) -> torch.device:
    """This process's accelerator if there is one, else the CPU. Two processes cannot share one GPU under NCCL,
    so more processes on a machine than visible GPUs is refused here, before NCCL fails less readably."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"process with local rank {local_rank} has no GPU of its own: {count} CUDA device(s) "
                          f"are visible on this machine; start at most {count} process(es) per machine "
                          f"(torchrun --nproc-per-node {count}), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run "
                          f"every process on the CPU with gloo")
    return torch.device("cuda", local_rank)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun with more than one process."""
    if not launched_by_torchrun():
        return DistInfo(device=device or default_device())
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    device = device or default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = round_store(rank, world_size) if os.environ.get(AGENT_STORE_ENV) == "True" else None
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, store=store,
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def round_store(rank: int, world_size: int, timeout: timedelta = STORE_TIMEOUT,
                attempt: timedelta = timedelta(seconds=5)) -> dist.Store:
    """A store that only this round of workers uses (see the module docstring): rank 0 hosts it on a free
    port of MASTER_ADDR and writes the port into the agent's store; the other ranks connect to the port
    they read there, and read again while it is a previous round's (nothing listens there any more)."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    if rank == 0:
        own = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(STORE_KEY, str(own.port))
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        announced = int(agent.get(STORE_KEY))
        try:
            return dist.TCPStore(host, announced, world_size, is_master=False, timeout=attempt)
        except RuntimeError as exc:  # DistNetworkError / DistStoreError: a dead round's port
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank} found no live process-group store at {host} (last announced "
                                   f"port {announced}) within {timeout}") from exc
            time.sleep(0.2)


def current() -> DistInfo:
    """The DistInfo of an already set-up process (rank 0 of 1 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=default_device())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), default_device(local_rank))


def teardown() -> None:
    """Leave the process group together: a rank that destroys it while another still talks to it can
    abort the whole job (gloo raises SIGABRT, "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s object on every rank (unchanged when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def restart_count() -> int:
    """How often torchrun (``--max-restarts``) has restarted the workers: the largest count over all ranks.

    Every rank must call it once the process group exists. The maximum, because an agent whose own workers
    did not fail restarts them for the new rendezvous round without counting a restart, so only the
    nodes whose workers failed see a count above 0; every rank must agree on whether to resume.
    """
    local = int(os.environ.get(RESTART_ENV, "0") or 0)
    if not (dist.is_available() and dist.is_initialized()):
        return local
    count = torch.tensor([local], dtype=torch.int64, device=current().device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())


def check_shared_folder(folder: Path, info: DistInfo) -> None:
    """Refuse an output folder that is not one folder for every rank (all ranks must call it).

    A checkpoint is assembled by all ranks in one folder (each writes its RNG and data position beside
    rank 0's weights), so with several machines ``--out`` must be on storage every node mounts at the same
    path. Rank 0 writes a probe file there; a rank that cannot see it is named, with its host.
    """
    if not info.distributed:
        return
    probe = folder / f".shared-probe-{uuid.uuid4().hex}" if info.is_main else None
    if probe is not None:
        probe.write_bytes(b"")
    probe = broadcast_object(probe)
    assert isinstance(probe, Path)
    seen: list[tuple[bool, str] | None] = [None] * info.world_size
    dist.all_gather_object(seen, (probe.is_file(), socket.gethostname()))
    dist.barrier()
    if info.is_main:
        probe.unlink(missing_ok=True)
    blind = [f"rank {rank} on {entry[1]}" for rank, entry in enumerate(seen) if entry is not None and not entry[0]]
    if blind:
        raise ConfigError(f"--out {folder} is not the same folder on every node: {', '.join(blind)} cannot see "
                          f"the files rank 0 writes there; put --out on storage every node mounts at the same "
                          f"path (NFS, Lustre, a cloud file system), because all ranks write each checkpoint")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The layers of every ``nn.ModuleList`` that hold parameters: the units to shard or checkpoint."""
    blocks = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            blocks.extend(m for m in module if any(True for _ in m.parameters()))
    return blocks


def wrap_model(model: nn.Module, info: DistInfo, mode: str = "auto") -> nn.Module:
    """DDP (default when distributed) or FSDP2 (``mode='fsdp'``); the model itself when single-process."""
    if not info.distributed or mode == "none":
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in repeated_blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
