"""Additive attention masks combining padding, causal/prefix visibility and position biases.

Masks are float tensors with 0 where attention is allowed and the dtype's minimum where it is not; a
finite minimum (not -inf) keeps fully-masked rows (padding queries) free of NaN.
"""

from __future__ import annotations

import torch


def additive_mask(
    key_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    causal: bool = False,
    prefix_lengths: torch.Tensor | None = None,
    offset: int = 0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Return (B|1, H|1, q_len, k_len) additive mask, or None when nothing is masked and there is no bias.

    ``key_mask`` (B, k_len) is true for real keys; ``offset`` is the position of the first query (kv cache);
    ``prefix_lengths`` (B,) makes the first n positions fully visible to each other (prefix LM).
    """
    if key_mask is None and not causal and bias is None:
        return None
    neg = torch.finfo(dtype).min
    allowed = None
    if key_mask is not None:
        allowed = key_mask.bool()[:, None, None, :]
    if causal:
        q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        visible = (k_pos <= q_pos)[None, None]
        if prefix_lengths is not None:
            in_prefix = k_pos[None] < prefix_lengths.to(device)[:, None, None]
            visible = visible | in_prefix[:, None]
        allowed = visible if allowed is None else allowed & visible
    mask = None
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, neg)
    if bias is not None:
        bias = bias.to(dtype)
        mask = bias if mask is None else (mask + bias).clamp(min=neg)
    return mask
