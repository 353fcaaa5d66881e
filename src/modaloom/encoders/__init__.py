"""Encoders; importing this package registers them."""

from modaloom.encoders import dual, transformer  # noqa: F401
from modaloom.encoders.base import Encoder, build_encoder

__all__ = ["Encoder", "build_encoder"]
