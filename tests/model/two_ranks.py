"""Runs a function on two spawned gloo ranks and collects what each puts on a queue (distributed loss tests)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(rank_fn: Callable[[int, int, Any], None]) -> list[Any]:
    """Starts ``rank_fn(rank, port, queue)`` in two spawned processes; their queue items, sorted (by rank)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_fn, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results
