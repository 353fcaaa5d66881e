"""Contrastive features of a dual model's inputs (``modaloom features --side text|image|speech [--head NAME]``):
one side of a ``clr`` head, projected and L2-normalised as the head compares them.

The head is chosen as the CLIP tasks choose it (``tasks.clip.clip_pair``: the one named, else the only one, else
the one over text and image). ``--side text`` reads sentences (plain text, one a line, or TSV/JSONL with
``text_a``), tokenized as captions; the other side reads the lists ``zero_shot`` reads (TSV/JSONL naming image or
audio files, or a folder of class sub-folders). Rows come out in input order. Speech features are made as the
model's training data made them (``tasks/audio_io.py``: the folder's ``preprocessing.json``), unless
``audio_options`` (``--audio-option sample_rate=8000``) say otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.errors import ConfigError

SIDES = ("text", "image", "speech")


@torch.no_grad()
def dual_features(model_dir: Path, input_path: Path, side: str, head: str = "", batch_size: int = 64,
                  seq_length: int = 0, audio_options: dict[str, Any] | None = None) -> tuple[np.ndarray, int]:
    """(rows x feature_size float32 array in input order, number of captions cut to the sequence length);
    ``audio_options`` (sample_rate, normalize) override the recorded ones for ``side`` speech."""
    from modaloom.model import load
    from modaloom.tasks.clip import caption_ids, pair_features
    from modaloom.tasks.finetune import task_for_model
    from modaloom.tasks.image_io import pad_ids, read_image_rows
    from modaloom.tasks.text_io import read_sentences

    if side not in SIDES:
        raise ConfigError(f"--side {side!r}; valid choices: {', '.join(SIDES)}")
    job = task_for_model(Path(model_dir), "zero_shot")  # any CLIP-like folder: its tokenizer and text positions
    job.cfg.train.batch_size = batch_size
    job.head_for(head)
    if seq_length:
        job.cfg.data.seq_length = min(seq_length, int(job.text_section.max_seq_length))
    if side not in ("text", job.kind):
        raise ConfigError(f"--side {side}: head {job.label!r} compares text with {job.kind}; use --side text or "
                          f"--side {job.kind}, or name another head with --head")
    if audio_options and side != "speech":
        raise ConfigError(f"--audio-option sets how audio is read; --side {side} reads none: drop it")
    job.set_audio_override(dict(audio_options or {}))
    model = load(model_dir).eval()
    device = next(model.parameters()).device
    pad = job.tokenizer.special_id("pad", "padding")
    parts, cut = [], 0
    if side == "text":
        texts = [row.text_a for row in read_sentences(input_path)]
        ids, cut = caption_ids(job.tokenizer, texts, job.cfg.data.seq_length)
        for start in range(0, len(ids), batch_size):
            chunk, mask = pad_ids(ids[start:start + batch_size], pad)
            parts.append(job.template_features(model, device, chunk, mask))
        return torch.cat(parts).float().numpy(), cut
    rows = read_image_rows(input_path, media=job.media)
    loaded = job.read_media(rows, False, "input")
    examples: list[dict[str, Any]] = [{"image": data, "where": row.where, "index": i}
                                      for i, (row, data) in enumerate(zip(loaded.rows, loaded.images, strict=True))]
    caption, mask = pad_ids(caption_ids(job.tokenizer, ["a"], job.cfg.data.seq_length)[0], pad)
    for batch in job.loader(examples, False):
        count = len(batch["index"])
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("pixel_values", "input_features", "feature_mask")}
        inputs.update(input_ids=caption.expand(count, -1).to(device), attention_mask=mask.expand(count, -1).to(device))
        parts.append(pair_features(model, inputs, job.label, job.text_index)[1])
    return torch.cat(parts).float().numpy(), cut
