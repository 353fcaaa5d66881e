"""Sentence features: the encoder's token vectors of each sentence pooled into one (``modaloom features``).

Sentences are tokenized as for classification (``[CLS] a [SEP] (b [SEP])``, longest-first truncation),
run through embedding + encoder in batches padded to their longest, pooled over real tokens only
(``modaloom.heads.pool``: first, mean, max, last) and, with ``normalize``, divided by their L2 norm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaloom.atomic import atomic_file
from modaloom.errors import ConfigError
from modaloom.outputs import check_not_input
from modaloom.tasks.finetune import resolve_tokenizer
from modaloom.tasks.text_io import MemoryLoader, Row, encode_pairs, read_sentences


@torch.no_grad()
def sentence_features(model_dir: Path, input_path: Path, pooling: str, normalize: bool, vocab: str = "",
                      seq_length: int = 0, batch_size: int = 64) -> tuple[np.ndarray, int]:
    """(sentences x hidden float32 array in input order, number of truncated sentences)."""
    from modaloom.model import load

    tokenizer, _ = resolve_tokenizer(model_dir, vocab)
    model = load(model_dir).eval()
    if list(model.config.embedding.parts) == ["dual"]:
        raise ConfigError(f"features pools one text encoder; {model_dir} is a dual (two-tower, CLIP-style) model. "
                          f"For its caption-image similarities run `modaloom predict --model {model_dir} --input "
                          f"PAIRS.tsv` on a clip_retrieval model (score and ranks per pair), or `modaloom features --side "
                          f"text|image|speech` for its contrastive features")
    return row_features(model, tokenizer, read_sentences(input_path), pooling, normalize, seq_length, batch_size)


@torch.no_grad()
def row_features(model: Any, tokenizer: Any, rows: list[Row], pooling: str, normalize: bool, seq_length: int = 0,
                 batch_size: int = 64) -> tuple[np.ndarray, int]:
    """``sentence_features`` of rows already read, with a model and tokenizer already loaded (the linear probe
    encodes its train, dev and test files with one model)."""
    from modaloom.heads import pool

    length = seq_length or int(model.config.embedding.max_seq_length)
    encoded = encode_pairs(tokenizer, rows, length)
    examples = [{"input_ids": ids, "segment_ids": seg, "index": i}
                for i, (ids, seg) in enumerate(zip(encoded.input_ids, encoded.segment_ids, strict=True))]
    parts = []
    for batch in MemoryLoader(examples, batch_size, tokenizer.special_id("pad", "padding")):
        inputs = {k: v for k, v in batch.items() if k != "index"}
        hidden, mask = model.encode(inputs)
        vectors = pool(hidden, batch["attention_mask"].bool(), pooling).float()
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        parts.append(vectors)
    return torch.cat(parts).numpy().astype(np.float32), encoded.truncated


def write_npy(path: Path, array: np.ndarray, inputs: list[Path]) -> Path:
    """``np.save`` to a temp file beside ``path``, renamed over it; never over one of ``inputs``."""
    check_not_input(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
    return path
