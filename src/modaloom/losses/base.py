"""How a target gets its loss: by the name in its ``loss`` option, from the registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from modaloom import registry


def build_loss(cfg: Any, name: str | None = None) -> nn.Module:
    """The loss named ``name`` (default: ``cfg.loss``), configured by the options in the target section ``cfg``."""
    name = name or cfg.loss
    return registry.get("loss", name, where=f"targets.{cfg.label}.loss")(cfg)
