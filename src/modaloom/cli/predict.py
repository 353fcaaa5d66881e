"""`modaloom predict`: a fine-tuned model's predictions for every line of a file, as JSONL.

The model folder records its task, labels and tokenizer (``config.json`` ``task`` section, ``tokenizer/``);
the output has one JSON line per input example, in input order, written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "predict with a fine-tuned model: one JSON line per input example"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="fine-tuned model folder (<finetune --out>/model)")
    parser.add_argument("--input", required=True, help="examples (TSV with header text_a [text_b] [label], or JSONL)")
    parser.add_argument("--out", required=True, help="predictions file to write (JSONL)")
    parser.add_argument("--task", help="refuse a model fine-tuned for another task than this one")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")


def load_for_inference(model_dir: str, task: str | None, batch_size: int):
    """(task, model on the CPU/GPU in eval mode, device) for a fine-tuned model folder."""
    import torch

    from modaloom.errors import ConfigError
    from modaloom.model import load
    from modaloom.tasks.finetune import task_for_model

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    job = task_for_model(Path(model_dir), task)
    job.cfg.train.batch_size = batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(model_dir, map_location=device).eval()
    return job, model, device


def run(args: argparse.Namespace) -> int:
    from modaloom.outputs import check_not_input

    job, model, device = load_for_inference(args.model, args.task, args.batch_size)
    out = Path(args.out)
    check_not_input(out, [Path(args.input), Path(args.model)])
    loader = job.input_loader(Path(args.input))
    job.predict(model, loader, out, device=device)
    count = getattr(loader, "record_count", len(loader.examples))  # qa: questions, not their windows
    print(f"{count} predictions written to {out}", file=sys.stderr)
    return 0
