"""Collectives shared by parts, losses and the trainer: one place that knows torch.distributed.

Every function is a no-op (or the identity) in a single process, so parts call them unconditionally.
Features gathered for contrastive losses keep their gradient to the local rows (as open_clip does with
``gather_with_grad``); ranks may hold different numbers of rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; a no-op when not distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def row_counts(local_rows: int, device: torch.device) -> list[int]:
    """How many rows each rank holds, in rank order ([local_rows] when not distributed)."""
    if not is_distributed():
        return [local_rows]
    size = torch.tensor([local_rows], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def rank_offset(local_rows: int, device: torch.device) -> int:
    """Rows held by the ranks before this one (0 when not distributed)."""
    return sum(row_counts(local_rows, device)[: rank()])


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order ([obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients of every rank and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        this_rank = dist.get_rank()
        ctx.sizes, ctx.rank = sizes, this_rank
        longest = max(sizes)
        padded = x
        if x.shape[0] < longest:
            pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
            padded = torch.cat([x, pad])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N_local, ...) concatenated over ranks in rank order, differentiable to the local shard.

    The backward pass sums every rank's gradient for this rank's rows, so that a loss computed on the
    gathered batch by every rank, averaged by DDP, has the same gradient as one process holding the whole
    batch. Returns ``x`` unchanged when not distributed.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x, row_counts(x.shape[0], x.device))


def _send_right_receive_left(x: torch.Tensor, receive_rows: int, step: int) -> torch.Tensor:
    """Send ``x`` ``step`` ranks to the right and return what arrives from ``step`` ranks to the left."""
    size, me = dist.get_world_size(), dist.get_rank()
    buffer = x.new_empty((receive_rows, *x.shape[1:]))
    ops = [dist.P2POp(dist.isend, x.contiguous(), (me + step) % size),
           dist.P2POp(dist.irecv, buffer, (me - step) % size)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return buffer


class _RingShift(torch.autograd.Function):
    """Pass rows to the right-hand neighbour; the backward pass returns their gradient to the left."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, receive_rows: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sent_rows = x.shape[0]
        return _send_right_receive_left(x, receive_rows, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        # the rows we received came from the left: their gradient goes back there, ours arrives from the right
        return _send_right_receive_left(grad, ctx.sent_rows, -1), None


def ring_pass(x: torch.Tensor) -> list[torch.Tensor]:
    """The shards of ``x`` held by the other ranks, one neighbour exchange at a time, differentiable.

    Element k (k = 0 .. world_size - 2) is the shard of rank ``rank - k - 1``: each round sends what
    arrived last round to the right-hand neighbour, so no rank ever holds more than two shards (SigLIP's
    scheme, Zhai et al. 2023). The gradient of each received shard travels back along the ring to the
    rank that owns it. Returns [] when not distributed; ranks may hold different numbers of rows.
    """
    if not is_distributed():
        return []
    sizes = row_counts(x.shape[0], x.device)
    size, me = len(sizes), dist.get_rank()
    received, current = [], x
    for k in range(1, size):
        current = _RingShift.apply(current, sizes[(me - k) % size])
        received.append(current)
    return received
