"""Losses registered by name (``@register("loss", name)``); a target with a ``loss`` option builds one.

A loss is an ``nn.Module`` built from its target's config section (which carries the loss's ``Options``
fields), so it may own parameters (a learnable bias, a queue) that land in the checkpoint under its
target. Importing this package registers the built-in losses.
"""

from modaloom.losses import cross_entropy, filip, infonce, moco, regression, siglip  # noqa: F401
from modaloom.losses.base import build_loss

__all__ = ["build_loss"]
