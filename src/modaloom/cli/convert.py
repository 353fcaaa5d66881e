"""`modaloom convert --from F --to T SRC DST`: HuggingFace / TencentPretrain checkpoints <-> modaloom folders.

- ``--from hf --to modaloom``: an HF model folder -> a modaloom model folder (``config.json`` +
  ``model.safetensors``); the HF model_type and architecture are recorded under ``interop`` so that a
  later ``--to hf`` writes the same HF class back.
- ``--from modaloom --to hf``: a folder that ``transformers``' ``from_pretrained`` loads.
- ``--from tencentpretrain``: a TencentPretrain ``.bin`` (read weights-only) with its JSON ``--config``. A
  checkpoint of its ``run_classifier.py`` / ``run_ner.py`` (``--to modaloom`` only) becomes a fine-tuned
  folder that ``modaloom predict`` runs: ``--labels`` names its classes (``label2id.json`` or ``0,1``),
  ``--vocab`` gives the vocabulary (default: ``vocab.txt`` beside SRC), ``--seq-length`` the prediction length.
  ``--vocab`` with a pre-trained checkpoint saves the vocabulary as the folder's ``tokenizer/`` too.
  ``--task qa`` reads a ``finetune/run_cmrc.py`` checkpoint (its ``output_layer`` would otherwise pass for a
  2-label tagger) onto the ``span`` head and records the qa task (char tokenization, its decoding, seq_length
  128, as run_cmrc.py), so ``modaloom predict`` runs on it.
- ``--from checkpoint``: a training checkpoint ``<out>/checkpoints/step-N`` (full or sharded by
  ``torch.distributed.checkpoint``; a sharded one is consolidated on this one process, no torchrun).
Tokenizer files found beside SRC are copied next to the converted weights.

DST must be new, empty, or (with ``--overwrite``) a model folder; it is never SRC, inside SRC, or a folder
holding an input (``modaloom.outputs.check_output_dir``). A replaced DST holds only what this conversion
wrote: files of the previous model (its tokenizer, say) do not survive into it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from modaloom.atomic import replace_directory
from modaloom.errors import ConfigError
from modaloom.outputs import check_output_dir

HELP = "convert checkpoints between HuggingFace transformers, TencentPretrain and modaloom"

SOURCES = ("hf", "modaloom", "tencentpretrain", "checkpoint")
TARGETS = ("hf", "modaloom")
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
FINETUNED_TASKS = ("qa",)
MODEL_MARKERS = ("config.json", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                 "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack"))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source_format", choices=SOURCES, required=True, help="format of SRC")
    parser.add_argument("--to", dest="target_format", choices=TARGETS, required=True, help="format of DST")
    parser.add_argument("src", help="source folder (hf, modaloom, checkpoint: a step-N folder) or .bin file "
                                    "(tencentpretrain)")
    parser.add_argument("dst", help="destination folder (written atomically); must be new or empty")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DST when it is a model folder (its old files are not kept)")
    parser.add_argument("--config", help="TencentPretrain JSON config (with --from tencentpretrain)")
    parser.add_argument("--labels", help="fine-tuned TencentPretrain classifier/tagger: its label names in id "
                        "order, a label2id.json file or a comma-separated list such as 0,1")
    parser.add_argument("--vocab", help="TencentPretrain checkpoint: its vocabulary file, saved as the folder's "
                        "tokenizer/ (fine-tuned checkpoints: default vocab.txt beside SRC)")
    parser.add_argument("--seq-length", type=int,
                        help="fine-tuned TencentPretrain checkpoint: tokens per example at prediction (default 128, "
                        "or the model's positions if fewer)")
    parser.add_argument("--model-type", help="HF model_type to export to (default: from the model, or inferred)")
    parser.add_argument("--architecture", help="HF class, e.g. BertForMaskedLM (default: from the targets)")
    parser.add_argument("--task", choices=FINETUNED_TASKS,
                        help="with --from tencentpretrain: the checkpoint is a fine-tuned one of this task "
                             "(qa: finetune/run_cmrc.py); the folder records the task for predict/evaluate")


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    folder = src if src.is_dir() else src.parent
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not (dst / name).exists():  # the converter's own files win
            shutil.copy2(folder / name, dst / name)
            copied.append(name)
    return copied


def _summary(label: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return f"\n  {label} ({len(keys)}): {shown}"


def _load_modaloom(src: Path) -> tuple[Any, dict[str, Any]]:
    from modaloom.model import load

    model = load(src)
    data = json.loads((src / "config.json").read_text(encoding="utf-8"))
    origin = data.get("interop", {}) if isinstance(data, dict) else {}
    return model, origin if isinstance(origin, dict) else {}


def _load_checkpoint(src: Path) -> Any:
    """The model of a training checkpoint folder; a sharded one is consolidated on this process."""
    from modaloom.model import Model, saved_model_config
    from modaloom.train.checkpoint import STATE_FILE, consolidated_model_state, latest_checkpoint, read_json
    from modaloom.weights import load_weights_checked

    if not (src / STATE_FILE).is_file():
        latest = latest_checkpoint(src) if src.is_dir() else None
        hint = f"; the run's latest is {latest}" if latest else ""
        raise ConfigError(f"{src} is not a complete training checkpoint (no {STATE_FILE}); pass a "
                          f"<out>/checkpoints/step-N folder{hint}")
    if not (src / "config.json").is_file():
        raise ConfigError(f"checkpoint {src} has no config.json (it was saved without a model config)")
    model = Model(saved_model_config(read_json(src / "config.json"), str(src / "config.json")))
    load_weights_checked(model, consolidated_model_state(src), f"checkpoint {src}")
    return model


def _load_tencentpretrain(src: Path, config: str, task: str | None = None):
    from modaloom.interop.tencentpretrain import convert_tencentpretrain, convert_tencentpretrain_span

    if task == "qa":
        return convert_tencentpretrain_span(src, config)
    return convert_tencentpretrain(src, config)


def _tencentpretrain_task_section(task: str | None) -> dict[str, Any]:
    """The ``task`` section a converted fine-tuned checkpoint records (empty for a pre-trained one): the
    options under which modaloom's task reads and decodes as the TencentPretrain script does."""
    if task != "qa":
        return {}
    from modaloom.config_schema import to_dict
    from modaloom.interop.tencentpretrain import CMRC_TASK_OPTIONS
    from modaloom.tasks.qa import qa_options

    options = to_dict(qa_options(CMRC_TASK_OPTIONS))
    return {"task": {"name": "qa", "options": options, "seq_length": 128}}  # run_cmrc.py's default seq_length


def _convert_tencentpretrain_finetuned(args: argparse.Namespace, src: Path, out: Path, dst: Path) -> str | None:
    """A run_classifier.py / run_ner.py checkpoint -> a fine-tuned modaloom folder with its task section and
    tokenizer; None for a checkpoint without a fine-tuned head (converted as a pre-trained model)."""
    from modaloom.data.tokenizers import guess_tokenizer_type, load_tokenizer
    from modaloom.interop.tencentpretrain_finetuned import (
        checkpoint_keys,
        convert_tencentpretrain_finetuned,
        finetuned_head,
        read_labels,
    )

    head = finetuned_head(checkpoint_keys(src))
    if head is None:
        if args.labels:
            raise ConfigError(f"--labels is for fine-tuned TencentPretrain checkpoints, but {src} holds no "
                              f"run_classifier.py or run_ner.py head")
        return None
    if args.target_format != "modaloom":
        raise ConfigError(f"{src} is a fine-tuned TencentPretrain {head}: convert it --to modaloom first (with "
                          f"--labels), then --from modaloom --to hf")
    if not args.labels:
        raise ConfigError(f"{src} is a fine-tuned TencentPretrain {head}; its label names are not in the checkpoint: "
                          f"pass --labels LABEL2ID.json or --labels with the names in id order (e.g. 0,1)")
    vocab = args.vocab or str(src.parent / "vocab.txt")
    if not Path(vocab).is_file():
        raise ConfigError(f"no vocabulary for the fine-tuned {head}: pass --vocab VOCAB_FILE (the one it was "
                          f"fine-tuned with)")
    conv = convert_tencentpretrain_finetuned(src, args.config, read_labels(args.labels), args.seq_length)
    conv.model.save(out, extra={"interop": {"from": "tencentpretrain", "source": str(src)}, "task": conv.task})
    load_tokenizer({"type": guess_tokenizer_type(vocab), "vocab": vocab}).save(out / "tokenizer")
    return (f"converted TencentPretrain {head} {src} -> {dst}: {conv.model.num_parameters():,} parameters, "
            f"task {conv.task['name']}, labels {', '.join(conv.task['labels'])}; tokenizer from {vocab}")


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if args.source_format == args.target_format:
        raise ConfigError(f"--from and --to are both {args.source_format!r}; nothing to convert")
    if not src.exists():
        raise ConfigError(f"source {src} does not exist")
    if args.config and args.source_format != "tencentpretrain":
        raise ConfigError("--config is only used with --from tencentpretrain")
    if getattr(args, "task", None) and args.source_format != "tencentpretrain":
        raise ConfigError("--task is only used with --from tencentpretrain (a fine-tuned TencentPretrain checkpoint)")
    if (args.labels or args.vocab) and args.source_format != "tencentpretrain":
        raise ConfigError("--labels and --vocab are only used with --from tencentpretrain (fine-tuned checkpoints)")
    if args.source_format == "tencentpretrain" and not args.config:
        raise ConfigError("--from tencentpretrain needs --config, the TencentPretrain JSON config of the model")
    inputs = [src, *([args.config] if args.config else []), *([args.vocab] if args.vocab else [])]
    check_output_dir(dst, kind="model", markers=MODEL_MARKERS, inputs=inputs, overwrite=args.overwrite)
    # keep_existing=False: a replaced model folder must not keep the previous model's tokenizer files
    with replace_directory(dst, keep_existing=False) as staging:
        message = _convert(args, src, staging, dst)
    print(message)
    return 0


def _convert(args: argparse.Namespace, src: Path, out: Path, dst: Path) -> str:
    """Convert SRC into the fresh folder ``out`` (renamed to ``dst`` afterwards); returns the summary."""
    if args.source_format == "hf":
        from modaloom.interop.hf import convert_from_hf

        conv = convert_from_hf(src, architecture=args.architecture)
        conv.model.save(out, extra={"interop": conv.origin()})
        copied = _copy_tokenizer(src, out)
        return (f"converted HF {conv.model_type} ({conv.architecture}) -> {dst}: "
                f"{conv.model.num_parameters():,} parameters"
                + _summary("randomly initialised (not in the checkpoint)", conv.random_init)
                + _summary("tokenizer files copied", copied))

    if args.source_format == "tencentpretrain" and not getattr(args, "task", None):  # --task qa: explicit
        finetuned = _convert_tencentpretrain_finetuned(args, src, out, dst)
        if finetuned is not None:
            return finetuned
    if args.source_format == "modaloom":
        model, origin = _load_modaloom(src)
    elif args.source_format == "checkpoint":
        model, origin = _load_checkpoint(src), {}
    else:
        model, origin = _load_tencentpretrain(src, args.config, getattr(args, "task", None)), {}

    if args.target_format == "modaloom":
        model.save(out, extra={"interop": {"from": args.source_format, "source": str(src)},
                               **_tencentpretrain_task_section(getattr(args, "task", None))})
        if args.vocab:  # the folder's tokenizer/, as a pretrain run's
            from modaloom.data.tokenizers import guess_tokenizer_type, load_tokenizer

            load_tokenizer({"type": guess_tokenizer_type(args.vocab), "vocab": args.vocab}).save(out / "tokenizer")
        copied = _copy_tokenizer(src, out)
        label = "TencentPretrain" if args.source_format == "tencentpretrain" else "training checkpoint"
        return (f"converted {label} {src} -> {dst}: {model.num_parameters():,} parameters"
                + _summary("tokenizer files copied", copied))

    from modaloom.interop.hf import modaloom_to_hf

    model_type = args.model_type or (origin.get("model_type") if origin.get("from") == "hf" else None)
    architecture = args.architecture
    if architecture is None and model_type is not None and model_type == origin.get("model_type"):
        architecture = origin.get("architecture")
    from modaloom.interop.hf.extras import (
        check_classifier_head,
        check_tagger_head,
        write_tokenizer_and_labels,
    )

    check_classifier_head(model.config, architecture)
    check_tagger_head(model.config)
    export = modaloom_to_hf(model, out, model_type=model_type, architecture=architecture)

    added = write_tokenizer_and_labels(src, out, int(model.config.embedding.max_seq_length)) \
        if args.source_format == "modaloom" else []
    copied = _copy_tokenizer(src, out)
    return (f"exported {src} -> HF {export.model_type} ({export.architecture}) at {dst}"
            + _summary("left out (no place in this HF class)", export.dropped)
            + _summary("tokenizer files copied", copied)
            + _summary("tokenizer files and labels written", added))
