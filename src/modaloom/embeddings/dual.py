"""``dual`` embedding: two (or more) independent embeddings (towers, e.g. CLIP's text and image streams).

Returns ``((x0, x1, ...), (mask0, mask1, ...))`` so that ``Model.encode``'s ``x, mask = embedding(...)`` hands the
pair of sequences and the pair of masks to the ``dual`` encoder, and the targets receive pairs too.
Each stream reads its own batch keys (``input_ids`` for text, ``pixel_values`` for images); a stream with
``input_key`` / ``mask_key`` set reads those instead (``input_ids_b`` for the second sentence of a siamese
text model). Each stream gets its own ForwardContext; they are kept in ``ctx.streams``.

A stream whose input is absent from the batch is skipped (``None`` for its sequence and mask), so that a model
with three towers (text, image and speech aligned to one space, docs/objectives.md) trains on text-speech
batches that hold no image; the targets reading a skipped stream report no loss. The input of a stream is its
``input_key``, else that of its first part (``STREAM_INPUTS``); a stream whose first part is not listed there
always runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from modaloom.batch import Batch
from modaloom.context import ForwardContext
from modaloom.embeddings.base import Embedding
from modaloom.errors import ConfigError
from modaloom.model_config import EmbeddingConfig
from modaloom.registry import register

# the batch key each sequence-creating part reads when its stream names no input_key
STREAM_INPUTS = {"word": "input_ids", "patch": "pixel_values", "masked_patch": "pixel_values",
                 "speech": "input_features"}


def check_stream_count(count: int, what: str) -> None:
    """A dual embedding or encoder holds two streams or more (a stream per tower)."""
    if count < 2:
        raise ConfigError(f"a dual {what} needs 2 or more streams (one per tower), got {count}")


def stream_input(cfg: EmbeddingConfig) -> str | None:
    """The batch key whose absence skips this stream (None: the stream always runs)."""
    return (cfg.input_key or STREAM_INPUTS.get(cfg.parts[0])) if cfg.parts else None


def missing_stream_inputs(model_cfg: Any, keys: Iterable[str]) -> list[str]:
    """For each target comparing two streams (``clr``, ``moco``: a ``streams`` option) whose stream inputs are not
    all among ``keys``, a line naming the target, its streams and the missing batch keys (why it gave no loss)."""
    streams = list(getattr(model_cfg.embedding, "streams", None) or [])
    present, out = set(keys), []
    for target in model_cfg.targets:
        pair = getattr(target, "streams", None)
        if not streams or not pair or max(pair) >= len(streams):
            continue
        absent = [key for key in (stream_input(streams[i]) for i in pair) if key is not None and key not in present]
        if absent:
            out.append(f"target {target.label!r} compares streams {list(pair)} and the batch has no "
                       f"{' or '.join(absent)}")
    return out


@dataclass
class DualOptions:
    """The streams, each a whole embedding section of its own."""

    # embedding sections (parts, sizes ...), one per tower: two for CLIP, three for text, image and speech
    streams: list[EmbeddingConfig] = field(default_factory=list)

    def check(self) -> None:
        check_stream_count(len(self.streams), "embedding")


@register("embedding", "dual")
class DualEmbedding(nn.Module):
    """One ``Embedding`` per ``embedding.streams`` entry; parameters under ``streams.{0,1,...}``."""

    Options = DualOptions
    composite = True  # build_embedding returns this module itself for parts == ["dual"]
    creates_sequence = True

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__()
        if cfg.parts != ["dual"]:
            raise ConfigError(f"'dual' must be the only embedding part (its streams hold the parts), got {cfg.parts}")
        check_stream_count(len(cfg.streams), "embedding")
        for i, stream in enumerate(cfg.streams):
            if "dual" in stream.parts:
                raise ConfigError(f"embedding.streams.{i}.parts cannot contain 'dual' (streams do not nest)")
        self.cfg = cfg
        self.streams = nn.ModuleList(Embedding(stream) for stream in cfg.streams)

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple(stream.output_size for stream in self.streams)  # type: ignore[return-value]

    def word_embedding(self) -> nn.Module | None:
        """The first stream's word table (tied heads on dual models read the first stream)."""
        for stream in self.streams:
            table = stream.word_embedding()
            if table is not None:
                return table
        return None

    def forward(self, batch: Batch, ctx: ForwardContext) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        contexts = [ctx.for_stream(cfg.input_key, cfg.mask_key) for cfg in self.cfg.streams]
        outputs = []
        for stream, cfg, sctx in zip(self.streams, self.cfg.streams, contexts, strict=True):
            key = stream_input(cfg)
            outputs.append((None, None) if key is not None and key not in batch else stream(batch, sctx))
        ctx.streams = contexts
        return tuple(x for x, _ in outputs), tuple(m for _, m in outputs)
