"""`modaloom evaluate`: a fine-tuned model's metrics on a labelled file: JSON on stdout, a table on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate a fine-tuned model on a labelled file (metrics as JSON on stdout, a table on stderr)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="fine-tuned model folder (<finetune --out>/model)")
    parser.add_argument("--input", required=True, help="labelled examples (TSV with header label text_a [text_b], "
                        "or JSONL)")
    parser.add_argument("--task", help="refuse a model fine-tuned for another task than this one")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")


def table(metrics: dict[str, float]) -> str:
    """Two aligned columns, metric and value."""
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in metrics.items())


def run(args: argparse.Namespace) -> int:
    from modaloom.cli.predict import load_for_inference
    from modaloom.errors import DataError
    from modaloom.train.steps import collect_outputs

    job, model, device = load_for_inference(args.model, args.task, args.batch_size)
    loader = job.input_loader(Path(args.input))
    if "label" not in loader.examples[0]:
        raise DataError(f"{args.input} has no labels; evaluate needs a labelled file (use predict for unlabelled)")
    metrics = job.metrics(collect_outputs(job, model, loader, device))
    print(table(metrics), file=sys.stderr)
    print(json.dumps(metrics))
    return 0
