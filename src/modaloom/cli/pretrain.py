"""`modaloom pretrain`: train a model from a config on a preprocessed dataset directory.

This module only parses the command line; the job is the ``pretrain`` task (``modaloom/tasks/pretrain.py``),
which checks everything it can before the first step. Under ``torchrun`` every process runs this command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "pre-train a model on a preprocessed dataset (works under torchrun)"

SHORTCUTS = {  # flag -> dotted config key
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seq_length": "data.seq_length",
    "precision": "train.precision",
    "seed": "train.seed",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="job config (model/data/train sections) or a model config")
    parser.add_argument("--data", required=True, help="dataset directory written by `modaloom preprocess`")
    parser.add_argument("--out", required=True, help="output directory: checkpoints, logs, plots, final model")
    parser.add_argument("--eval-data", help="a second dataset directory to evaluate on (default: a held-out "
                        "part of --data when train.eval_every > 0)")
    parser.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    parser.add_argument("--batch-size", type=int, help="examples per micro-batch per process (train.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (train.lr)")
    parser.add_argument("--seq-length", type=int, help="data.seq_length")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="train.precision")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--resume", action="store_const", const="latest", default=None,
                        help="continue from the latest complete checkpoint in --out (start fresh if none)")
    parser.add_argument("--resume-from", dest="resume", metavar="CHECKPOINT",
                        help="continue from this checkpoint directory (a step-N folder)")
    parser.add_argument("--init-from", metavar="MODEL_DIR",
                        help="start from the weights of a saved model folder (continued pre-training); its keys "
                             "and shapes must match the configured model")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="any config key, e.g. train.warmup_steps=100 model.encoder.layers_num=4")


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The dotted overrides, with the shortcut flags appended as their config keys."""
    overrides = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def run(args: argparse.Namespace) -> int:
    from modaloom import registry
    from modaloom.tasks.base import JobPaths, exit_status, load_job_config

    cfg = load_job_config(args.config, overrides_of(args))
    paths = JobPaths(data=Path(args.data), out=Path(args.out), resume=args.resume,
                     eval_data=Path(args.eval_data) if args.eval_data else None,
                     init_from=Path(args.init_from) if args.init_from else None)
    return exit_status(registry.get("task", "pretrain")(cfg, paths).run())
