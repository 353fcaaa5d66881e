"""``dual`` encoder: two encoders configured per stream (CLIP's text and image towers, siamese models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.encoders.base import Encoder, build_encoder
from modaloom.errors import ConfigError
from modaloom.model_config import EncoderConfig
from modaloom.registry import register


@dataclass
class DualEncoderOptions:
    """The two towers, each a whole encoder section of its own."""

    # two encoder sections (type, sizes ...), one per tower
    streams: list[EncoderConfig] = field(default_factory=list)

    def check(self) -> None:
        if len(self.streams) != 2:
            raise ConfigError(f"a dual encoder needs exactly 2 streams, got {len(self.streams)}")


@register("encoder", "dual")
class DualEncoder(Encoder):
    """Runs ``streams[i]`` on the i-th embedded sequence; returns ``(h0, h1)``. Parameters: ``streams.{0,1}``.

    ``input_size`` is the pair of stream widths from the ``dual`` embedding (an int applies to both).
    """

    Options = DualEncoderOptions

    def __init__(self, cfg: EncoderConfig, input_size: int | tuple[int, int]) -> None:
        super().__init__(cfg, input_size)  # type: ignore[arg-type]
        if len(cfg.streams) != 2:
            raise ConfigError(f"a dual encoder needs exactly 2 streams, got {len(cfg.streams)}")
        sizes = tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size, input_size)
        for i, stream in enumerate(cfg.streams):
            if stream.type == "dual":
                raise ConfigError(f"encoder.streams.{i}.type cannot be 'dual' (streams do not nest)")
            stream.validate()
        self.streams = nn.ModuleList(
            build_encoder(stream, size, where=f"encoder.streams.{i}")
            for i, (stream, size) in enumerate(zip(cfg.streams, sizes, strict=True))
        )

    @property
    def output_size(self) -> tuple[int, int]:  # type: ignore[override]
        return tuple(stream.output_size for stream in self.streams)  # type: ignore[return-value]

    def forward(self, x: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: ForwardContext) -> tuple[Any, Any]:
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ConfigError("the dual encoder needs the dual embedding (a pair of sequences)")
        masks = mask if isinstance(mask, (tuple, list)) else (mask, mask)
        contexts = ctx.streams or [ctx, ctx]
        return tuple(
            stream(xi, mi, batch, sctx)
            for stream, xi, mi, sctx in zip(self.streams, x, masks, contexts, strict=True)
        )
