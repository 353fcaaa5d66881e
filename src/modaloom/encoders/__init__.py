"""Encoders; importing this package registers them."""

from modaloom.encoders import cnn, dual, modality_experts, rnn, transformer  # noqa: F401
from modaloom.encoders.base import Encoder, build_encoder

__all__ = ["Encoder", "build_encoder"]
