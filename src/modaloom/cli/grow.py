"""`modaloom grow SRC DST --depth N --ffn-size F`: a trained model folder made deeper and/or wider, to train on.

The grown folder is an ordinary model folder (config.json + model.safetensors, the tokenizer copied), so
``modaloom pretrain --init-from DST`` (with the printed ``model.*`` overrides, or a config describing the grown
shape) and ``modaloom finetune --model DST`` continue from it. Which growth is function-preserving is explained in
``modaloom.growth``; the summary and ``config.json``'s ``growth`` entry say it for this model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from modaloom.atomic import replace_directory
from modaloom.errors import ConfigError
from modaloom.outputs import check_output_dir

HELP = "grow a trained model deeper or with wider feed-forward blocks, inheriting its weights (GrowCLIP)"

MODEL_MARKERS = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="modaloom model folder to grow (a run's <out>/model, or converted)")
    parser.add_argument("dst", help="destination folder (written atomically); must be new or empty")
    parser.add_argument("--depth", type=int, default=0, metavar="N",
                        help="layers to add on top of each grown transformer stack (copies of the stack)")
    parser.add_argument("--ffn-size", type=int, metavar="F",
                        help="new feedforward_size (at least the current one); new units start with zero outputs")
    parser.add_argument("--depth-mode", choices=("identity", "stack"),
                        help="identity: new layers' output projections zero, function-preserving, pre-norm only "
                             "(default there); stack: plain copies, not function-preserving (post-norm default)")
    parser.add_argument("--stream", type=int, action="append", metavar="I",
                        help="dual encoder: grow stream I only (repeatable; default: every stream)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new feed-forward units' input weights")
    parser.add_argument("--overwrite", action="store_true", help="replace DST when it is a model folder")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    if (src / "tokenizer").is_dir():
        shutil.copytree(src / "tokenizer", dst / "tokenizer")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def run(args: argparse.Namespace) -> int:
    from modaloom.growth import grow_model
    from modaloom.model import load

    src, dst = Path(args.src), Path(args.dst)
    if not (src / "config.json").is_file():
        raise ConfigError(f"{src} is not a modaloom model folder (no config.json); pass a run's <out>/model folder")
    check_output_dir(dst, kind="model", markers=MODEL_MARKERS, inputs=[src], overwrite=args.overwrite)
    growth = grow_model(load(src), depth=args.depth, ffn_size=args.ffn_size, streams=args.stream,
                        mode=args.depth_mode, seed=args.seed)
    saved = json.loads((src / "config.json").read_text(encoding="utf-8"))
    extra = {k: v for k, v in saved.items() if k not in ("format", "model", "growth")}
    extra["growth"] = {"from": str(src), **growth.record()}
    with replace_directory(dst, keep_existing=False) as staging:
        growth.model.save(staging, extra=extra)
        _copy_tokenizer(src, staging)
    verdict = "function-preserving" if growth.function_preserving else "NOT function-preserving"
    print(f"grew {src} -> {dst}: {growth.model.num_parameters():,} parameters, {verdict}")
    for stack in growth.stacks:
        print(f"  {stack.describe()}")
    print(f"  continue training: modaloom pretrain --init-from {dst} ... {' '.join(growth.overrides)}")
    return 0
