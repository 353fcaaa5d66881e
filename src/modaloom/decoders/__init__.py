"""Decoders; importing this package registers them."""

from modaloom.decoders import transformer  # noqa: F401
from modaloom.decoders.transformer import TransformerDecoder

__all__ = ["TransformerDecoder"]
