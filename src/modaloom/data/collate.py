"""Stack per-example numpy dicts into a batch of tensors: pad to the longest or to seq_length, or pack.

Padding values come from the processor (``pad_value(key)``): -100 for keys ending in ``labels``, the pad
id for ``input_ids`` / ``decoder_input_ids``, 0 for everything else. Masks that the model needs
(``attention_mask``, ``decoder_attention_mask``, ``feature_mask``) are added when a processor does not
produce them, with 1 for real positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modaloom import batch as bk
from modaloom.errors import ConfigError, DataError

PADDING_MODES = ("longest", "max_length", "packing")
# Token-aligned keys: padded to seq_length in "max_length" mode, concatenated in "packing" mode.
TEXT_KEYS = frozenset({
    bk.INPUT_IDS, bk.ATTENTION_MASK, bk.SEGMENT_IDS, bk.MLM_LABELS, bk.LM_LABELS,
    bk.BILM_LABELS_BACKWARD, bk.DECODER_INPUT_IDS, bk.DECODER_ATTENTION_MASK,
})
# Mask key derived from a padded key when the processor does not supply it.
DERIVED_MASKS = {
    bk.INPUT_IDS: bk.ATTENTION_MASK,
    bk.DECODER_INPUT_IDS: bk.DECODER_ATTENTION_MASK,
    bk.INPUT_FEATURES: bk.FEATURE_MASK,
}


def pad_stack(arrays: Sequence[np.ndarray], length: int, value: int | float) -> np.ndarray:
    """Stack arrays that differ in their first dimension, padding each to ``length`` with ``value``."""
    first = arrays[0]
    out = np.full((len(arrays), length, *first.shape[1:]), value, dtype=first.dtype)
    for row, array in enumerate(arrays):
        out[row, : array.shape[0]] = array
    return out


@dataclass
class Collator:
    """Picklable collate function for DataLoader workers."""

    pad_value: Callable[[str], int | float]
    padding: str = "longest"
    seq_length: int = 0
    batch_rows: int = 0  # packing only: rows per batch

    def __post_init__(self) -> None:
        if self.padding not in PADDING_MODES:
            raise ConfigError(f"unknown padding {self.padding!r}; valid choices: {', '.join(PADDING_MODES)}")
        if self.padding != "longest" and self.seq_length < 1:
            raise ConfigError(f"padding {self.padding!r} needs a positive seq_length")

    def __call__(self, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise DataError("cannot collate an empty batch")
        if self.padding == "packing":
            return self._pack(examples)
        return self._pad(examples)

    def _pad(self, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        keys = list(examples[0])
        for number, example in enumerate(examples[1:], start=1):
            if list(example) != keys:
                raise DataError(f"example {number} of a batch has keys {sorted(example)}, the first has "
                                f"{sorted(keys)}")
        batch: dict[str, np.ndarray] = {}
        lengths: dict[str, list[int]] = {}
        for key in keys:
            arrays = [np.asarray(example[key]) for example in examples]
            if arrays[0].ndim == 0:
                batch[key] = np.stack(arrays)
                continue
            sizes = [a.shape[0] for a in arrays]
            if any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
                raise DataError(f"batch key {key!r}: examples differ beyond the first dimension "
                                f"({sorted({a.shape for a in arrays})})")
            length = max(sizes)
            if self.padding == "max_length" and key in TEXT_KEYS:
                length = max(length, self.seq_length)
            batch[key] = pad_stack(arrays, length, self.pad_value(key))
            lengths[key] = sizes
        for source, mask_key in DERIVED_MASKS.items():
            if source in batch and mask_key not in batch:
                width = batch[source].shape[1]
                mask = np.zeros((len(examples), width), dtype=np.int64)
                for row, size in enumerate(lengths[source]):
                    mask[row, :size] = 1
                batch[mask_key] = mask
        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}

    def _pack(self, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Concatenate every example's token keys into one stream and cut it into rows of seq_length."""
        keys = list(examples[0])
        other = [key for key in keys if key not in TEXT_KEYS]
        if other:
            raise ConfigError(f"packing needs token-aligned examples (lm-style data); keys {other} cannot be "
                              "packed: use padding 'longest' or 'max_length'")
        streams = {key: np.concatenate([np.asarray(e[key]).reshape(-1) for e in examples]) for key in keys}
        total = len(streams[keys[0]])
        if any(len(s) != total for s in streams.values()):
            raise DataError("packing needs every token key of an example to have the same length")
        rows = max(1, -(-total // self.seq_length))
        if self.batch_rows:
            rows = min(rows, self.batch_rows)
        capacity = rows * self.seq_length
        batch = {}
        for key, stream in streams.items():
            flat = np.full(capacity, self.pad_value(key), dtype=stream.dtype)
            used = min(total, capacity)
            flat[:used] = stream[:used]
            batch[key] = flat.reshape(rows, self.seq_length)
        if "attention_mask" not in batch:
            mask = np.zeros(capacity, dtype=np.int64)
            mask[: min(total, capacity)] = 1
            batch["attention_mask"] = mask.reshape(rows, self.seq_length)
        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}
