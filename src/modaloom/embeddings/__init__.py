"""Embedding parts; importing this package registers them."""

from modaloom.embeddings import dual, speech, text, vision  # noqa: F401
from modaloom.embeddings.base import Embedding, EmbeddingPart, build_embedding

__all__ = ["Embedding", "EmbeddingPart", "build_embedding"]
