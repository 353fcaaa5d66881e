"""Hard negatives for image-text matching (ALBEF, Li et al. 2021): mined within a batch from pair scores.

For each image a text is drawn with probability softmax(score) over the batch's other texts (its own
caption excluded), and for each text an image likewise; the pairs so formed are re-encoded as negatives.
Pairs known to match are left out as BLIP does with its image ids (``known_matches``: another row whose text or
image is identical to the anchor's is a positive, not a negative); a row with nothing left draws none (-1).
Captions are compared (and matched) as written, with any masked-LM corruption undone first (``unmasked_text``):
two copies of one caption masked at different positions are still the same caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modaloom.batch import IGNORE_INDEX, INPUT_IDS, MLM_LABELS


def sample_hard_negatives(scores: torch.Tensor, generator: torch.Generator | None = None,
                          exclude: torch.Tensor | None = None) -> torch.Tensor:
    """For each row i of ``scores`` (N, N), a column j != i drawn with probability softmax(scores[i]) over
    the columns other than i and those ``exclude`` (N, N, bool) marks; -1 for a row with no column left. N must
    be at least 2. Draws use ``generator`` (default: torch's global RNG)."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"hard negatives need square scores of at least 2 x 2, got {tuple(scores.shape)}")
    banned = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude must match the scores' shape {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        banned = banned | exclude.to(torch.bool)
    empty = banned.all(dim=1)
    # a row with every column banned draws from uniform weights, then reports -1
    weights = torch.softmax(scores.float().masked_fill(banned, float("-inf")).masked_fill(empty[:, None], 0.0), -1)
    picked = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return picked.masked_fill(empty, -1)


def known_matches(batch: dict[str, torch.Tensor], rows: torch.Tensor, image_keys: Sequence[str],
                  text_keys: Sequence[str]) -> torch.Tensor:
    """(A, A) bool: row a's pair and row b's are known to match across, as their texts (every text key equal) or
    their images (every image key equal) are identical; the diagonal is True."""
    def same(keys: Sequence[str]) -> torch.Tensor | None:
        equal = None
        for key in keys:
            if key in batch:
                flat = batch[key][rows].flatten(1)
                found = (flat[:, None, :] == flat[None, :, :]).all(dim=-1)
                equal = found if equal is None else equal & found
        return equal

    out = torch.eye(rows.shape[0], dtype=torch.bool, device=rows.device)
    for found in (same(text_keys), same(image_keys)):
        if found is not None:
            out = out | found
    return out


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


def unmasked_text(batch: dict[str, torch.Tensor], ids_key: str = INPUT_IDS,
                  labels_key: str = MLM_LABELS) -> dict[str, torch.Tensor]:
    """``batch`` with the masked LM's corruption of ``ids_key`` undone: the original token wherever ``labels_key``
    holds one (every value but IGNORE_INDEX), as ViLT and ALBEF read unmasked captions for matching. The labels
    align with the ids from the first position (a text + image sequence's labels may run past the text). A shallow
    copy when something was masked; ``batch`` itself when nothing was (or either key is absent)."""
    ids, labels = batch.get(ids_key), batch.get(labels_key)
    if ids is None or labels is None:
        return batch
    if labels.dim() != 2 or labels.shape[0] != ids.shape[0]:
        raise ValueError(f"{labels_key} {tuple(labels.shape)} must be (rows, positions) with the rows of {ids_key} "
                         f"{tuple(ids.shape)}")
    length = min(ids.shape[1], labels.shape[1])
    labels = labels[:, :length]
    masked = labels != IGNORE_INDEX
    if not bool(masked.any()):
        return batch
    restored = ids.clone()
    restored[:, :length] = torch.where(masked, labels, ids[:, :length])
    return {**batch, ids_key: restored}
