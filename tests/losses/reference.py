"""What the contrastive loss tests share: open_clip's loss module (loaded by path, as the package itself
imports torchvision) and a fixed batch of normalised features with a learnable scale and bias."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from types import ModuleType, SimpleNamespace

import torch
import torch.nn.functional as F

from modaloom.losses import build_loss

ROWS, WIDTH = 6, 5  # the whole batch; two ranks hold 3 rows each


def open_clip_loss() -> ModuleType | None:
    """open_clip's ``loss.py`` as a module, or None when open-clip-torch is not installed."""
    try:
        dist = importlib.metadata.distribution("open-clip-torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = next((dist.locate_file(f) for f in dist.files or [] if str(f).endswith("open_clip/loss.py")), None)
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def features(rows: slice = slice(None)) -> list[torch.Tensor]:
    """Leaf tensors: stream 0 and stream 1 features (L2-normalised), log scale and bias."""
    g = torch.Generator().manual_seed(7)
    f0 = F.normalize(torch.randn(ROWS, WIDTH, generator=g), dim=-1)
    f1 = F.normalize(f0 + 0.8 * torch.randn(ROWS, WIDTH, generator=g), dim=-1)  # matching pairs lean together
    log_scale, bias = torch.tensor(1.5), torch.tensor(-1.0)
    return [t.clone().requires_grad_(True) for t in (f0[rows], f1[rows], log_scale, bias)]


def ours(name: str, leaves: list[torch.Tensor]) -> torch.Tensor:
    """The registered loss ``name`` on ``leaves`` (siglip with the bias, infonce without)."""
    f0, f1, log_scale, bias = leaves
    loss = build_loss(SimpleNamespace(label="clr", gather=True, ring=True), name)
    args = (f0, f1, log_scale.exp()) + ((bias,) if name == "siglip" else ())
    return loss(*args).loss


def reference(name: str, module: ModuleType, leaves: list[torch.Tensor], rank: int = 0,
              world_size: int = 1) -> torch.Tensor:
    """open_clip's loss on ``leaves``: ``SigLipLoss`` (neighbour shifts), or ``ClipLoss`` with
    ``local_loss=True, gather_with_grad=True`` (local rows against every rank's, gradients to every rank)."""
    f0, f1, log_scale, bias = leaves
    if name == "siglip":
        return module.SigLipLoss(rank=rank, world_size=world_size, dist_impl="shift")(f0, f1, log_scale.exp(), bias)
    clip = module.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    return clip(f0, f1, log_scale.exp())


def loss_and_grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """[loss, d loss / d each leaf] (detached)."""
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [loss.detach()] + [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
