"""Targets; importing this package registers them."""

from modaloom.targets import bilm, contrastive, itm, mae, moco, span, tagger, text  # noqa: F401
from modaloom.targets.base import Target, TargetOutput

__all__ = ["Target", "TargetOutput"]
