"""The batch contract between data, model, Trainer and tasks: key names, the ignore index, counting.

A batch is a ``dict[str, torch.Tensor]`` whose keys are listed in docs/architecture.md. Label tensors hold
``IGNORE_INDEX`` where nothing is to be predicted. This module imports torch lazily, so that
preprocessing workers that only need the names stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Batch = dict[str, "torch.Tensor"]

IGNORE_INDEX = -100  # label value that no loss or metric counts

# inputs
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
SEGMENT_IDS = "segment_ids"
PREFIX_LENGTHS = "prefix_lengths"
DECODER_INPUT_IDS = "decoder_input_ids"
DECODER_ATTENTION_MASK = "decoder_attention_mask"
PIXEL_VALUES = "pixel_values"
PATCH_MASK = "patch_mask"
INPUT_FEATURES = "input_features"
FEATURE_MASK = "feature_mask"
# labels
LABELS = "labels"
MLM_LABELS = "mlm_labels"
SP_LABELS = "sp_labels"
LM_LABELS = "lm_labels"
BILM_LABELS_BACKWARD = "bilm_labels_backward"
IMAGE_TOKEN_LABELS = "image_token_labels"
ITM_LABELS = "itm_labels"

# The keys whose (batch, length) shape is the sequence a step processes, in order of preference.
SEQUENCE_KEYS = (INPUT_IDS, INPUT_FEATURES, DECODER_INPUT_IDS)


def count_tokens(batch: Batch) -> int:
    """Tokens in a batch as TencentPretrain counts them: batch x sequence length of the inputs."""
    for key in SEQUENCE_KEYS:
        if key in batch:
            value = batch[key]
            if key == INPUT_IDS and value.ndim == 3:  # multiple choice: (B, choices, L)
                return int(value.numel())
            return int(value.shape[0] * value.shape[1])
    return 0


# The mask that marks the real (non-padding) positions of each sequence key.
SEQUENCE_MASKS = {INPUT_IDS: ATTENTION_MASK, INPUT_FEATURES: FEATURE_MASK, DECODER_INPUT_IDS: DECODER_ATTENTION_MASK}


def count_real_tokens(batch: Batch) -> torch.Tensor:
    """Non-padding tokens of the sequence ``count_tokens`` counts (its mask's sum), as a 0-dim int64 tensor on
    the batch's device, so that a training loop can add it up without waiting for the device each step;
    without a mask every position is real."""
    import torch

    for key in SEQUENCE_KEYS:
        if key in batch:
            mask = batch.get(SEQUENCE_MASKS[key])
            if mask is not None and mask.shape[:2] == batch[key].shape[:2]:
                return mask.sum(dtype=torch.int64)
            return torch.tensor(count_tokens(batch), dtype=torch.int64, device=batch[key].device)
    return torch.zeros((), dtype=torch.int64)


def count_samples(batch: Batch) -> int:
    """Examples in a batch: the first dimension of its first tensor that has one."""
    import torch

    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


def ids_beyond(batch: dict[str, Any], key: str, rows: int) -> int | None:
    """The largest id in ``batch[key]`` when it falls outside a table of ``rows`` rows (a negative one counts
    too), else None. Checked on the CPU before the batch moves: on CUDA an out-of-range lookup is a device-side
    assert that ends the process's CUDA context instead of an error a user can read."""
    import torch

    ids = batch.get(key)
    if not isinstance(ids, torch.Tensor) or ids.device.type != "cpu" or ids.is_floating_point() or ids.numel() == 0:
        return None
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        return low
    return high if high >= rows else None


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (non-blocking); other values unchanged; a no-op on the CPU."""
    import torch

    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
