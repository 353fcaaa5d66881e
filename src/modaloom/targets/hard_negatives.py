"""Hard negatives for image-text matching (ALBEF, Li et al. 2021): mined within a batch from pair scores.

For each image a text is drawn with probability softmax(score) over the batch's other texts (its own
caption excluded), and for each text an image likewise; the pairs so formed are re-encoded as negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_hard_negatives(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row i of ``scores`` (N, N), a column j != i drawn with probability softmax(scores[i]) over
    the columns other than i. N must be at least 2. Draws use ``generator`` (default: torch's global RNG)."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"hard negatives need square scores of at least 2 x 2, got {tuple(scores.shape)}")
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    weights = torch.softmax(scores.float().masked_fill(eye, float("-inf")), dim=-1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def pair_batch(batch: dict[str, torch.Tensor], image_rows: torch.Tensor, text_rows: torch.Tensor,
               image_keys: Sequence[str], text_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """A batch whose row k pairs the image of row ``image_rows[k]`` with the text of row ``text_rows[k]``
    (only the keys named, those present in ``batch``)."""
    out = {key: batch[key][image_rows] for key in image_keys if key in batch}
    out.update({key: batch[key][text_rows] for key in text_keys if key in batch})
    return out


def all_pairs(batch: dict[str, torch.Tensor], rows: torch.Tensor, image_keys: Sequence[str],
              text_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every (image of rows[a], text of rows[b]) pair, image-major: row a * len(rows) + b."""
    n = rows.shape[0]
    return pair_batch(batch, rows.repeat_interleave(n), rows.repeat(n), image_keys, text_keys)
