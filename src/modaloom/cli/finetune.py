"""`modaloom finetune`: fine-tune a saved model (or a new one from a config) for a task on labelled files.

This module only parses the command line; the job is the task named by ``--task`` (``modaloom/tasks/``).
Overrides ``task.<key>=value`` set task options (e.g. ``task.kind=multi_label``); others set config keys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fine-tune a model for a task (classification, tagging, qa ...) on train/dev files; the best dev model is exported"
# the fine-tuning tasks registered by modaloom.tasks (kept in line with the registry by tests/cli/test_main.py)
TASKS = ("classification", "clip_retrieval", "image_classification", "multiple_choice", "qa", "sentence_embedding",
         "speech_to_text", "tagging", "text2text")

SHORTCUTS = {"steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr",
             "seq_length": "data.seq_length", "precision": "train.precision", "seed": "train.seed"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, metavar="TASK",
                        help=f"the task (docs/tasks.md): {', '.join(TASKS)}, or one a plug-in registers")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder to start from (pre-trained, converted or fine-tuned)")
    source.add_argument("--config", help="model config or zoo name: a randomly initialised model (needs --vocab)")
    parser.add_argument("--vocab", default="", help="vocabulary file (default: the model folder's tokenizer)")
    parser.add_argument("--train", required=True, help="training file in the task's format (classification: TSV with header label text_a "
                        "[text_b], or JSONL; see docs/tasks.md)")
    parser.add_argument("--dev", required=True, help="dev file: evaluated every epoch, picks the best model")
    parser.add_argument("--test", help="test file evaluated with the best model at the end")
    parser.add_argument("--out", required=True, help="output directory: checkpoints, logs, curves, model/")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training file (default 3)")
    parser.add_argument("--steps", type=int, help="optimizer steps instead of --epochs (train.steps)")
    parser.add_argument("--batch-size", type=int, help="examples per batch per process (default 32)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-5, 10%% linear warm-up)")
    parser.add_argument("--seq-length", type=int, help="maximum tokens per example (default 128)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"],
                        help="train.precision (auto: bf16 where the device has it natively, else fp32)")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--resume", action="store_const", const="latest", default=None,
                        help="continue from the latest complete checkpoint in --out")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config keys (train.warmup_ratio=0.1) or task options (task.kind=regression)")


def split_overrides(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """(config overrides with the shortcut flags appended, task options)."""
    config, options = [], {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if key.startswith("task.") and sep:
            options[key[len("task."):]] = value
        else:
            config.append(item)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            config.append(f"{key}={value}")
    return config, options


def typed_key_values(items: list[str], prefix: str, refusal: str) -> dict[str, object]:
    """``<prefix>KEY=VALUE`` items as {KEY: JSON value or string} (``typed_options``); an item without the prefix
    or the ``=`` is a ConfigError: ``refusal`` followed by the item."""
    from modaloom.errors import ConfigError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not (key.startswith(prefix) and sep and key[len(prefix):]):
            raise ConfigError(f"{refusal}, got {item!r}")
        options[key[len(prefix):]] = value
    return typed_options(options)


def typed_options(options: dict[str, str]) -> dict[str, object]:
    """Command-line strings as JSON values where they are one (true, 0.5), else kept as strings."""
    import json

    out: dict[str, object] = {}
    for key, value in options.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from modaloom import registry
    from modaloom.errors import ConfigError
    from modaloom.tasks.base import JobPaths, exit_status
    from modaloom.tasks.finetune import FinetuneInputs, FinetuneTask, finetune_config

    task_cls = registry.get("task", args.task, where="--task")
    if not (isinstance(task_cls, type) and issubclass(task_cls, FinetuneTask)):
        raise ConfigError(f"--task {args.task} is not a fine-tuning task; use `modaloom {args.task}` instead")
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    config_overrides, options = split_overrides(args)
    model_dir = Path(args.model) if args.model else None
    cfg = finetune_config(model_dir, args.config, config_overrides, keep_targets=task_cls.kept_targets)
    overridden = {item.partition("=")[0].strip() for item in config_overrides}
    inputs = FinetuneInputs(test=Path(args.test) if args.test else None, vocab=args.vocab,
                            options=typed_options(options), epochs=args.epochs, overridden=overridden)
    paths = JobPaths(data=Path(args.train), out=Path(args.out), eval_data=Path(args.dev), resume=args.resume,
                     init_from=model_dir)
    return exit_status(task_cls(cfg, paths, inputs).run())
