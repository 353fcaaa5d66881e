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
    parser.add_argument("--task", help="refuse a model fine-tuned for another task than this one; zero_shot: "
                        "classify the images (or, with task.head=speech, the audio clips) of a labelled file with a "
                        "CLIP model and prompts; linear_probe: "
                        "a logistic regression on the frozen model's features (task.train=FILE [task.dev=FILE])")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    parser.add_argument("--out", help="also write the metrics to this JSON file (atomically; never over an input)")
    parser.add_argument("options", nargs="*", metavar="task.key=value",
                        help="task options at evaluation, e.g. for --task zero_shot: task.classes=cat,dog "
                             "task.template='a photo of a {}.' or task.templates='[\"a photo of a {}.\", ...]'; "
                             "for --task zero_shot or clip_retrieval with a model that has an itm head (VLMo, ALBEF): "
                             "task.scorer=itm task.rerank=10 re-ranks the top 10 by the matching head; "
                             "for --task zero_shot or clip_retrieval with a model of several clr heads (text, image "
                             "and speech): task.head=NAME picks one (task.head=speech reads lists of audio files); "
                             "for --task linear_probe: task.train=FILE task.dev=FILE task.c=1.0 task.pooling=mean")


def table(metrics: dict[str, float]) -> str:
    """Two aligned columns, metric and value."""
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in metrics.items())


def task_options(items: list[str]) -> dict[str, object]:
    """``task.<key>=value`` items as {key: JSON value or string}; anything else is refused."""
    from modaloom.cli.finetune import typed_key_values

    return typed_key_values(items, "task.", "evaluate takes task options as task.<key>=value")


def run(args: argparse.Namespace) -> int:
    from modaloom.atomic import atomic_write_json
    from modaloom.cli.predict import load_for_inference
    from modaloom.errors import DataError
    from modaloom.outputs import check_not_input
    from modaloom.train.steps import collect_outputs

    options = task_options(args.options)
    out = None
    if args.out:
        inputs = [Path(args.input), Path(args.model), *(Path(str(options[k])) for k in ("train", "dev", "classes",
                                                                                        "templates") if k in options)]
        out = check_not_input(args.out, inputs)
    if args.task == "linear_probe":  # no fine-tuned head: features of the frozen model, fitted here
        from modaloom.tasks.linear_probe import linear_probe

        metrics = linear_probe(Path(args.model), Path(args.input), options, batch_size=args.batch_size)
    else:
        job, model, device = load_for_inference(args.model, args.task, args.batch_size)
        job.set_options(options)
        loader = job.input_loader(Path(args.input))
        if "label" not in loader.examples[0]:
            raise DataError(f"{args.input} has no labels; evaluate needs a labelled file (use predict for "
                            f"unlabelled)")
        metrics = job.metrics(collect_outputs(job, model, loader, device))
    print(table(metrics), file=sys.stderr)
    print(json.dumps(metrics))
    if out is not None:
        atomic_write_json(out, metrics)
        print(f"metrics written to {out}", file=sys.stderr)
    return 0
