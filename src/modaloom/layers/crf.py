"""A linear-chain conditional random field: negative log-likelihood (forward algorithm) and Viterbi decoding.

Batched over sequences of different lengths given by a mask; a mask must be a prefix (``1 1 1 0 0``), which
``compact`` makes of any mask (e.g. the first piece of every word). Parameters keep the names and meaning of
the ``pytorch-crf`` package that TencentPretrain's tagger uses, so that its checkpoints map one to one:
``start_transitions[j]`` (score of starting with tag j), ``end_transitions[j]`` (ending with j) and
``transitions[i, j]`` (tag i followed by tag j).
"""

from __future__ import annotations

import torch
from torch import nn


def compact(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the positions where ``mask`` is true to the front of each row, in order: (B, L, ...) -> (B, W, ...)
    with W the largest count, and the prefix mask (B, W) of the kept positions."""
    mask = mask.bool()
    counts = mask.sum(1)
    width = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    index = order.reshape(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    kept = torch.arange(width, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return values.gather(1, index), kept


class CRF(nn.Module):
    """Transition scores between ``num_tags`` tags; emissions come from the tagger's output layer."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-sequence -log p(tags | emissions), (B,); 0 for an empty sequence. ``mask`` is a prefix mask."""
        emissions = emissions.float()
        if emissions.shape[1] == 0:
            return emissions.new_zeros(emissions.shape[0])
        mask = mask.bool()
        tags = tags.masked_fill(~mask, 0)
        return torch.where(mask[:, 0], self._log_partition(emissions, mask) - self._score(emissions, tags, mask),
                           torch.zeros((), device=emissions.device))

    def _score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The score of the given tag sequences: start + emissions + transitions + end."""
        rows = torch.arange(emissions.shape[0], device=emissions.device)
        score = self.start_transitions[tags[:, 0]] + emissions[rows, 0, tags[:, 0]]
        for t in range(1, emissions.shape[1]):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[rows, t, tags[:, t]]
            score = score + step * mask[:, t]
        last = tags[rows, (mask.long().sum(1) - 1).clamp(min=0)]
        return score + self.end_transitions[last]

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log of the sum of exp(score) over every tag sequence (the forward algorithm)."""
        alpha = self.start_transitions + emissions[:, 0]  # (B, C)
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + self.end_transitions, dim=1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The best tag sequence of every row (Viterbi), (B, T); positions outside ``mask`` hold 0."""
        emissions = emissions.float()
        mask = mask.bool()
        batch, length, _ = emissions.shape
        if length == 0:
            return torch.zeros(batch, 0, dtype=torch.long, device=emissions.device)
        score = self.start_transitions + emissions[:, 0]
        pointers = []
        for t in range(1, length):
            best, previous = (score.unsqueeze(2) + self.transitions).max(dim=1)
            pointers.append(previous)
            score = torch.where(mask[:, t].unsqueeze(1), best + emissions[:, t], score)
        score = score + self.end_transitions
        lengths = mask.long().sum(1)
        out = torch.zeros(batch, length, dtype=torch.long, device=emissions.device)
        final = score.argmax(1)
        for t in range(length - 1, -1, -1):
            tag = torch.where(lengths - 1 == t, final, torch.zeros_like(final))
            if t < length - 1:
                followed = pointers[t].gather(1, out[:, t + 1].unsqueeze(1)).squeeze(1)
                tag = torch.where(t < lengths - 1, followed, tag)
            out[:, t] = tag
        return out
