"""`modaloom pretrain`: train a model from a config on a preprocessed dataset directory.

Everything that can be checked is checked before the first step, and refused with a message that says
what to change: the config, the data directory (processor, vocabulary), the output directory, and a
resumed checkpoint's model. Under ``torchrun`` every process runs this same command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from modaloom.errors import ConfigError, DataError

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
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="any config key, e.g. train.warmup_steps=100 model.encoder.layers_num=4")


def load_job_config(path: str, overrides: list[str]) -> Any:
    """A Config from a job file, or from a model-only file (then ``model`` is the whole file)."""
    from modaloom.config import config_dict, load_config

    data, _ = config_dict(path)
    if set(data) & {"model", "data", "train"}:
        return load_config(path, overrides)
    try:
        return load_config(None, overrides, base={"model": data})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_out_dir(out: Path, resume: str | None) -> None:
    """The output directory must be writable, and must not hold another run unless resuming it."""
    from modaloom.train.checkpoint import latest_checkpoint

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to output directory {out} ({exc.strerror or exc}); "
                          f"choose another --out or fix its permissions") from None
    latest = latest_checkpoint(out)
    if latest is not None and resume is None:
        raise ConfigError(f"{out} already holds checkpoints of a run (latest {latest.name}); pass --resume to "
                          f"continue it, or choose another --out")


def check_data(cfg: Any, data_dir: Path, dataset: Any, processor: Any) -> None:
    """Refuse data made by another processor or tokenizer than the model expects; fill vocab_size 0."""
    from modaloom.model_config import streams_of

    entry = dataset.manifest.get("processor") or {}
    made_by = entry.get("name", "?")
    if cfg.data.processor and cfg.data.processor != made_by:
        raise DataError(
            f"{data_dir} was preprocessed with processor {made_by!r} but the config expects "
            f"{cfg.data.processor!r}; preprocess again with --processor {cfg.data.processor} or set "
            f"data.processor={made_by}")
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return
    vocab = int(tokenizer.vocab_size)
    embedding = cfg.model.embedding
    sections = [("model.embedding", embedding)] + [
        (f"model.embedding.streams.{i}", s) for i, s in enumerate(streams_of(embedding)) if "word" in s.parts]
    if cfg.model.tgt_embedding is not None and cfg.model.share_embedding:
        sections.append(("model.tgt_embedding", cfg.model.tgt_embedding))
    for where, section in sections:
        if not any(p.startswith("word") for p in section.parts):
            continue
        if section.vocab_size == 0:
            section.vocab_size = vocab
        elif section.vocab_size != vocab:
            raise DataError(
                f"{where}.vocab_size is {section.vocab_size} but {data_dir} was tokenized with a vocabulary of "
                f"{vocab} ({', '.join(str(f) for f in tokenizer.files()) or tokenizer.type_name}); set "
                f"{where}.vocab_size={vocab}, or preprocess with the vocabulary the model was made for")
    for target in cfg.model.targets:
        if getattr(target, "vocab_size", 0) not in (0, vocab):
            raise DataError(f"target {target.label} has vocab_size {target.vocab_size} but the data's vocabulary "
                            f"has {vocab}; set it to {vocab} or 0 (derived)")


def check_positions(cfg: Any) -> None:
    embedding = cfg.model.embedding
    if "pos" in embedding.parts and cfg.data.seq_length > embedding.max_seq_length:
        raise ConfigError(
            f"data.seq_length {cfg.data.seq_length} exceeds model.embedding.max_seq_length "
            f"{embedding.max_seq_length}; lower data.seq_length or raise max_seq_length")


def preflight(model: Any, loader_args: dict[str, Any], data_dir: Path) -> None:
    """Run the model once on the first batch (no update) so that a data/model mismatch stops here."""
    import torch

    from modaloom.data.loader import build_loader

    loader = build_loader(data_dir, **{**loader_args, "num_workers": 0})
    batch = next(iter(loader), None)
    if batch is None:
        raise DataError(f"{data_dir} yields no batch of {loader_args['batch_size']} examples; lower --batch-size")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(batch)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise DataError(f"the model cannot run on batches of {data_dir} (keys {sorted(batch)}): "
                        f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    if output.loss is None:
        raise DataError(f"batches of {data_dir} (keys {sorted(batch)}) carry no labels for the model's targets "
                        f"{[t.label for t in model.config.targets]}; preprocess with a matching processor")


def export_model(ckpt: Path, out: Path, data_dir: Path) -> Path:
    """``<out>/model``: the final weights and config (loadable by ``modaloom.load``) plus the tokenizer."""
    final = out / "model"
    tmp = out / f".model.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(ckpt / name, tmp / name)
    if (data_dir / "tokenizer").is_dir():
        shutil.copytree(data_dir / "tokenizer", tmp / "tokenizer")
    old = out / ".model.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_job_config(args.config, overrides)
    data_dir, out = Path(args.data), Path(args.out)
    check_positions(cfg)

    from modaloom.data.processors.base import processor_from_dataset
    from modaloom.data.storage import open_dataset
    from modaloom.train import distributed as dist_utils

    dataset = open_dataset(data_dir)
    processor = processor_from_dataset(dataset, cfg.data.seq_length,
                                       {"masking": dict(cfg.data.masking)} if cfg.data.masking else None)
    check_data(cfg, data_dir, dataset, processor)

    info = dist_utils.setup()
    try:
        if info.is_main:
            check_out_dir(out, args.resume)
        dist_utils.barrier()
        return train(cfg, args, info, dataset, processor, data_dir, out)
    finally:
        dist_utils.teardown()


def train(cfg: Any, args: argparse.Namespace, info: Any, dataset: Any, processor: Any, data_dir: Path,
          out: Path) -> int:
    import torch

    from modaloom.config_schema import to_dict
    from modaloom.data.loader import Loader
    from modaloom.model import build_model
    from modaloom.train.checkpoint import check_same_model, latest_checkpoint
    from modaloom.train.trainer import Trainer

    resume_from: Path | None = None
    if args.resume:
        resume_from = latest_checkpoint(out) if args.resume == "latest" else Path(args.resume)
        if resume_from is not None:
            if not (resume_from / "trainer_state.json").is_file():
                raise ConfigError(f"--resume {resume_from}: not a complete checkpoint directory")
            check_same_model(resume_from, to_dict(cfg.model))

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    holdout = cfg.train.eval_holdout if (cfg.train.eval_every and not args.eval_data) else 0
    loader_args = {"batch_size": cfg.train.batch_size, "seed": cfg.train.seed, "seq_length": cfg.data.seq_length,
                   "padding": cfg.data.padding, "rank": info.rank, "world_size": info.world_size,
                   "num_workers": cfg.data.num_workers, "shuffle": cfg.data.shuffle, "holdout": holdout}
    preflight(model, loader_args, data_dir)
    train_loader = Loader(dataset, processor, split="train", **{k: v for k, v in loader_args.items()})
    eval_loader = None
    if cfg.train.eval_every:
        eval_args = {**loader_args, "shuffle": False, "drop_last": False, "num_workers": 0}
        if args.eval_data:
            from modaloom.data.loader import build_loader

            eval_loader = build_loader(args.eval_data, split="all", **{**eval_args, "holdout": 0})
        elif holdout:
            eval_loader = Loader(dataset, processor, split="heldout", **eval_args)
    if info.is_main:
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1), encoding="utf-8")
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        print(f"modaloom pretrain: {params:,} parameters, {len(dataset)} records in {data_dir}, "
              f"{info.world_size} process(es) on {info.device}, global batch "
              f"{cfg.train.batch_size * cfg.train.grad_accum_steps * info.world_size}", file=sys.stderr)
    trainer = Trainer(model, cfg.train, train_loader, out, eval_loader=eval_loader,
                      model_config=to_dict(cfg.model), info=info, seq_length=cfg.data.seq_length)
    summary = trainer.fit(resume=resume_from if resume_from is not None else False)
    if info.is_main:
        if summary.get("checkpoint"):
            summary["model_dir"] = str(export_model(Path(summary["checkpoint"]), out, data_dir))
        if summary["interrupted"]:
            print(f"interrupted at step {summary['steps']}; checkpoint saved in {summary['checkpoint']}; "
                  f"continue with --resume", file=sys.stderr)
        print(f"loss curve: {summary.get('curves_png')}\nsummary:    {summary.get('summary_json')}\n"
              f"model:      {summary.get('model_dir')}\n"
              f"{summary['tokens_per_second']:.0f} tokens/s, {summary['samples_per_second']:.1f} samples/s, "
              f"MFU {summary['mfu']}, peak RSS {summary['peak_rss_mb']:.0f} MB")
    return 0
