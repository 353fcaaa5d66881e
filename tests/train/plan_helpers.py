"""Measured peak memory of a few real CPU training steps, to check ``modaloom.train.plan`` against.

The peak is the highest total of live tensor bytes that torch's CPU allocator reports to the profiler
(``profile_memory=True``: every allocation and free, with the running total), from before the model is
built to the end of the last step. Process RSS is not used: the interpreter and libraries (hundreds of MB)
and the C allocator's caching would drown the tensors of a small model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from modaloom.batch import Batch

IGNORE = -100


def synthetic_batch(cfg: Any, generator: torch.Generator) -> Batch:
    """A full micro-batch (every position real) with the labels of the config's text targets."""
    b, s = cfg.train.batch_size, cfg.data.seq_length
    vocab = cfg.model.embedding.vocab_size
    batch: Batch = {"input_ids": torch.randint(5, vocab, (b, s), generator=generator)}
    if "seg" in cfg.model.embedding.parts:
        batch["segment_ids"] = torch.zeros(b, s, dtype=torch.long)
    mask_prob = float((cfg.data.masking or {}).get("mask_prob", 0.15))
    for target in cfg.model.targets:
        if target.type == "mlm":
            labels = torch.full((b, s), IGNORE)
            masked = torch.rand(b, s, generator=generator).argsort(dim=1)[:, : round(s * mask_prob)]
            labels.scatter_(1, masked, torch.randint(5, vocab, masked.shape, generator=generator))
            batch["mlm_labels"] = labels
        elif target.type == "lm":
            batch["lm_labels"] = torch.randint(5, vocab, (b, s), generator=generator)
        elif target.type == "sp":
            batch["sp_labels"] = torch.randint(0, 2, (b,), generator=generator)
        else:
            raise ValueError(f"no synthetic labels for target type {target.type!r}")
    return batch


def measured_peak(cfg: Any, steps: int = 3) -> int:
    """Peak live tensor bytes over building the model and ``steps`` Trainer steps on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    from modaloom.config_schema import to_dict
    from modaloom.model import build_model
    from modaloom.train.distributed import DistInfo
    from modaloom.train.trainer import Trainer

    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(cfg, generator) for _ in range(steps * cfg.train.grad_accum_steps)]
    threads = torch.get_num_threads()  # the Trainer applies train.threads process-wide
    try:
        with tempfile.TemporaryDirectory() as out, \
                profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            torch.manual_seed(0)
            model = build_model(cfg.model)
            trainer = Trainer(model, cfg.train, batches, out, model_config=to_dict(cfg.model),
                              info=DistInfo(device=torch.device("cpu")), seq_length=cfg.data.seq_length)
            for _ in range(steps):
                trainer.train_step()
    finally:
        torch.set_num_threads(threads)
    return peak_from_profile(prof)


def peak_from_profile(prof: Any) -> int:
    """The highest 'Total Allocated' of the CPU memory events the profiler recorded, less the total when it
    started (torch's counter runs on across profiling sessions of one process)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    memory = sorted((e["ts"], e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in events
                    if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0)
    if not memory:
        return 0
    _, first_total, first_bytes = memory[0]
    return max(total for _, total, _ in memory) - (first_total - first_bytes)
