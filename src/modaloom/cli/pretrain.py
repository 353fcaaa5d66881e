"""`modaloom pretrain`: train a model from a config on a preprocessed dataset directory.

This module only parses the command line; the job is the ``pretrain`` task (``modaloom/tasks/pretrain.py``),
which checks everything it can before the first step. Under ``torchrun`` every process runs this command.
``--dry-run`` prints the plan of the run instead (``modaloom/train/plan.py``): parameters, memory per rank
and tokens per step, from a model built on the meta device; it reads at most the data's manifest and
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--data", help="dataset directory written by `modaloom preprocess` (required to train; "
                        "a dry run reads only its manifest, for the vocabulary size)")
    parser.add_argument("--out", help="output directory: checkpoints, logs, plots, final model (required to "
                        "train; a dry run neither needs nor touches it)")
    parser.add_argument("--eval-data", help="a second dataset directory to evaluate on (default: a held-out "
                        "part of --data when train.eval_every > 0)")
    parser.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    parser.add_argument("--batch-size", type=int, help="examples per micro-batch per process (train.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (train.lr)")
    parser.add_argument("--seq-length", type=int, help="data.seq_length")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"],
                        help="train.precision (auto: bf16 where the device has it natively, else fp32)")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--resume", action="store_const", const="latest", default=None,
                        help="continue from the latest complete checkpoint in --out (start fresh if none)")
    parser.add_argument("--resume-from", dest="resume", metavar="CHECKPOINT",
                        help="continue from this checkpoint directory (a step-N folder)")
    parser.add_argument("--init-from", metavar="MODEL_DIR",
                        help="start from the weights of a saved model folder (continued pre-training); its keys "
                             "and shapes must match the configured model")
    plan = parser.add_argument_group("plan a run (--dry-run)")
    plan.add_argument("--dry-run", action="store_true",
                      help="print parameters (per part), memory per rank (weights, gradients, optimizer state, "
                           "activations of one micro-batch, estimated peak) and tokens per step for this config "
                           "under train.parallel and train.precision, from a model built on the meta device; "
                           "trains nothing and writes nothing")
    plan.add_argument("--nproc", type=int, default=None, metavar="N",
                      help="number of processes to plan for (default: $WORLD_SIZE, else 1)")
    plan.add_argument("--device", choices=["cpu", "cuda"], default=None,
                      help="device to plan for (default: cuda when this machine has one, else cpu)")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
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


def dry_run(args: argparse.Namespace, cfg: object) -> int:
    """Print the plan of the configured run (table, or JSON with --json); nothing is written."""
    import torch

    from modaloom.tasks.pretrain import plan_from_header
    from modaloom.train.plan import format_plan, plan_run

    plan_from_header(cfg, Path(args.data) if args.data else None)  # type: ignore[arg-type]
    world = args.nproc if args.nproc is not None else int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_run(cfg, world, device)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
    return 0


def run(args: argparse.Namespace) -> int:
    from modaloom import registry
    from modaloom.errors import ConfigError
    from modaloom.tasks.base import JobPaths, exit_status, load_job_config

    cfg = load_job_config(args.config, overrides_of(args))
    if args.dry_run:
        return dry_run(args, cfg)
    if args.nproc is not None or args.device or args.json:
        raise ConfigError("--nproc, --device and --json only go with --dry-run; torchrun sets the processes of a run")
    missing = [flag for flag, value in (("--data", args.data), ("--out", args.out)) if not value]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required to train "
                          f"(only --dry-run goes without)")
    paths = JobPaths(data=Path(args.data), out=Path(args.out), resume=args.resume,
                     eval_data=Path(args.eval_data) if args.eval_data else None,
                     init_from=Path(args.init_from) if args.init_from else None)
    return exit_status(registry.get("task", "pretrain")(cfg, paths).run())
