"""Recurrent encoders: ``rnn``, ``lstm``, ``gru`` and their bidirectional forms ``birnn``, ``bilstm``, ``bigru``.

Bidirectional encoders follow TencentPretrain (and ELMo's bi-LM): a forward network and a separate backward
network, each of ``hidden_size // 2``, whose outputs are concatenated [forward; backward]. The backward
network reads each sequence right to left, so its output at position t has seen tokens t..end only; the
forward network's output has seen 0..t only. This is what the ``bilm`` target needs.

Padding: the real tokens of each row (``mask`` true) are moved to the front (in order for the forward
network, reversed for the backward one) before the RNN runs and moved back after, so padding never enters
a real position's state, whichever side the padding is on; padded outputs are zero.
"""

from __future__ import annotations

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.encoders.base import Encoder
from modaloom.errors import ConfigError
from modaloom.model_config import EncoderConfig
from modaloom.registry import register

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def real_first_order(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) gather index putting each row's real positions first, in order, then its padding."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)


def reversed_real_order(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) gather index putting each row's real positions first in reverse order, then its padding."""
    order = real_first_order(mask)
    count = mask.sum(1, keepdim=True)
    j = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return order.gather(1, torch.where(j < count, count - 1 - j, j))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_rows(y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inverse of ``gather_rows``: the row at position j of ``y`` goes back to ``index[:, j]``."""
    return torch.zeros_like(y).scatter(1, index.unsqueeze(-1).expand(-1, -1, y.shape[-1]), y)


def make_rnn(kind: str, cfg: EncoderConfig, input_size: int, hidden_size: int) -> nn.RNNBase:
    return CELLS[kind](input_size, hidden_size, num_layers=cfg.layers_num, batch_first=True,
                       dropout=cfg.dropout if cfg.layers_num > 1 else 0.0)


def run_in_order(rnn: nn.RNNBase, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Run ``rnn`` over x reordered by ``index`` (None: as is) and put the outputs back in place."""
    if index is None:
        return rnn(x)[0]
    return scatter_rows(rnn(gather_rows(x, index))[0], index)


def _padded(mask: torch.Tensor | None) -> torch.Tensor | None:
    return mask.bool() if mask is not None else None


class RecurrentEncoder(Encoder):
    """One left-to-right RNN/LSTM/GRU stack of ``layers_num`` layers; parameter prefix ``rnn``."""

    kind = "rnn"

    def __init__(self, cfg: EncoderConfig, input_size: int) -> None:
        super().__init__(cfg, input_size)
        self.rnn = make_rnn(self.kind, cfg, input_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: dict[str, torch.Tensor],
                ctx: ForwardContext) -> torch.Tensor:
        mask = _padded(mask)
        out = run_in_order(self.rnn, x, real_first_order(mask) if mask is not None else None)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return self.dropout(out)


class BiRecurrentEncoder(Encoder):
    """Separate forward and backward stacks (``rnn_forward``, ``rnn_backward``), each ``hidden_size // 2``."""

    kind = "rnn"

    def __init__(self, cfg: EncoderConfig, input_size: int) -> None:
        super().__init__(cfg, input_size)
        if cfg.hidden_size % 2:
            raise ConfigError(
                f"bidirectional encoder {cfg.type!r} splits hidden_size between two directions; "
                f"hidden_size {cfg.hidden_size} is odd"
            )
        self.rnn_forward = make_rnn(self.kind, cfg, input_size, cfg.hidden_size // 2)
        self.rnn_backward = make_rnn(self.kind, cfg, input_size, cfg.hidden_size // 2)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: dict[str, torch.Tensor],
                ctx: ForwardContext) -> torch.Tensor:
        mask = _padded(mask)
        if mask is None:
            forward = self.rnn_forward(x)[0]
            backward = self.rnn_backward(x.flip(1))[0].flip(1)
        else:
            forward = run_in_order(self.rnn_forward, x, real_first_order(mask))
            backward = run_in_order(self.rnn_backward, x, reversed_real_order(mask))
        out = torch.cat([forward, backward], dim=-1)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return self.dropout(out)


@register("encoder", "rnn")
class RNNEncoder(RecurrentEncoder):
    kind = "rnn"


@register("encoder", "lstm")
class LSTMEncoder(RecurrentEncoder):
    kind = "lstm"


@register("encoder", "gru")
class GRUEncoder(RecurrentEncoder):
    kind = "gru"


@register("encoder", "birnn")
class BiRNNEncoder(BiRecurrentEncoder):
    kind = "rnn"


@register("encoder", "bilstm")
class BiLSTMEncoder(BiRecurrentEncoder):
    kind = "lstm"


@register("encoder", "bigru")
class BiGRUEncoder(BiRecurrentEncoder):
    kind = "gru"
