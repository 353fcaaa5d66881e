"""``dual`` encoder: one encoder configured per stream (CLIP's text and image towers, siamese models, a third
tower aligned to a trained CLIP); a stream the ``dual`` embedding skipped (its input absent) stays ``None``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.embeddings.dual import check_stream_count
from modaloom.encoders.base import Encoder, build_encoder
from modaloom.errors import ConfigError
from modaloom.model_config import EncoderConfig
from modaloom.registry import register


@dataclass
class DualEncoderOptions:
    """The towers, each a whole encoder section of its own."""

    # encoder sections (type, sizes ...), one per tower, as many as the dual embedding's streams
    streams: list[EncoderConfig] = field(default_factory=list)

    def check(self) -> None:
        check_stream_count(len(self.streams), "encoder")


@register("encoder", "dual")
class DualEncoder(Encoder):
    """Runs ``streams[i]`` on the i-th sequence; returns ``(h0, h1, ...)``. Parameters: ``streams.{0,1,...}``.

    ``input_size`` is the tuple of stream widths from the ``dual`` embedding (an int applies to all).
    """

    Options = DualEncoderOptions

    def __init__(self, cfg: EncoderConfig, input_size: int | tuple[int, ...]) -> None:
        super().__init__(cfg, input_size)  # type: ignore[arg-type]
        check_stream_count(len(cfg.streams), "encoder")
        count = len(cfg.streams)
        sizes = tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size,) * count
        if len(sizes) != count:
            raise ConfigError(f"the dual encoder has {count} streams but the embedding gives {len(sizes)} "
                              f"(embedding.streams and encoder.streams must have the same length)")
        for i, stream in enumerate(cfg.streams):
            if stream.type == "dual":
                raise ConfigError(f"encoder.streams.{i}.type cannot be 'dual' (streams do not nest)")
            stream.validate()
        self.streams = nn.ModuleList(
            build_encoder(stream, size, where=f"encoder.streams.{i}")
            for i, (stream, size) in enumerate(zip(cfg.streams, sizes, strict=True))
        )

    @property
    def output_size(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(stream.output_size for stream in self.streams)  # type: ignore[return-value]

    def forward(self, x: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: ForwardContext) -> tuple[Any, ...]:
        count = len(self.streams)
        if not isinstance(x, (tuple, list)) or len(x) != count:
            raise ConfigError(f"the dual encoder needs the dual embedding ({count} sequences, one per stream)")
        masks = mask if isinstance(mask, (tuple, list)) else (mask,) * count
        contexts = ctx.streams or [ctx] * count
        return tuple(
            None if xi is None else stream(xi, mi, batch, sctx)
            for stream, xi, mi, sctx in zip(self.streams, x, masks, contexts, strict=True)
        )
