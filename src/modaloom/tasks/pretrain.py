"""The ``pretrain`` task: train a model from a config on a dataset directory written by ``preprocess``.

Everything that can be checked is checked before the first step, and refused with a message that says
what to change: the config, the data directory (processor, vocabulary), the output directory, and a
resumed checkpoint's model. The model runs once on the first batch (no update) before training starts.
Evaluation is the model's loss and metrics averaged over evaluation batches of all ranks (``ModelSteps``).

Prediction: pre-training objectives (masked tokens, shuffled sentences, next tokens on random text) have
no per-example answer worth writing, so this task keeps the base ``prediction_records``, which refuses;
fine-tuning tasks define it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modaloom.errors import ConfigError, DataError
from modaloom.model_config import streams_of
from modaloom.registry import register
from modaloom.tasks.base import Task

if TYPE_CHECKING:
    from torch import nn

    from modaloom.batch import Batch
    from modaloom.config import Config
    from modaloom.train.distributed import DistInfo


def dataset_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two datasets interchangeable for one model: processor and tokenizer (vocabulary bytes and
    options, by fingerprint; the size alone misses a shuffled vocabulary)."""
    tokenizer = manifest.get("tokenizer") or {}
    return {"processor": (manifest.get("processor") or {}).get("name"), "tokenizer": tokenizer.get("fingerprint")}


def check_same_kind(data_dir: Path, manifest: dict[str, Any], other_dir: Path, other: dict[str, Any]) -> None:
    """Evaluation data must be made like the training data, or its numbers mean nothing (or crash)."""
    ours, theirs = dataset_identity(manifest), dataset_identity(other)
    changed = [k for k in ours if ours[k] != theirs[k]]
    if changed:
        shown = "; ".join(f"{k} {theirs[k]!r} vs {ours[k]!r}" for k in changed)
        raise DataError(f"--eval-data {other_dir} was not made like --data {data_dir} ({shown}); preprocess the "
                        f"evaluation corpus with the same processor and vocabulary")


def check_positions(cfg: Config) -> None:
    """The text's sequence length must fit the model's learned positions. An embedding whose sequence comes
    from pixels (ViT, MAE, BEiT: patches) or audio frames spends its positions on them, fixed by the input's
    size, so data.seq_length is not compared there."""
    from modaloom.embeddings.dual import stream_input

    embedding = cfg.model.embedding
    text = stream_input(embedding) in (None, "input_ids")  # the embedding reads token ids
    if "pos" in embedding.parts and text and cfg.data.seq_length > embedding.max_seq_length:
        raise ConfigError(
            f"data.seq_length {cfg.data.seq_length} exceeds model.embedding.max_seq_length "
            f"{embedding.max_seq_length}; lower data.seq_length or raise max_seq_length")


def resolve_seq_length(cfg: Config, manifest: dict[str, Any] | None, data_dir: Path | None) -> None:
    """``data.seq_length`` 0 (unset) becomes the length the dataset was preprocessed with (without one: 128, at
    most the model's ``max_seq_length``), then ``check_positions``; a
    set value above it is refused for token data unless the loader packs records (``padding: packing``), since
    no record is longer: the batches would be padded, or the positions sized, for tokens that never come."""
    from modaloom.data.config import seq_length_without_data

    entry = (manifest or {}).get("processor") or {}
    made = int(entry.get("seq_length") or 0)
    if cfg.data.seq_length == 0:
        cfg.data.seq_length = made or seq_length_without_data(cfg.model.embedding.max_seq_length)
    check_positions(cfg)  # the model's limit first: no data fixes that
    if made and cfg.data.seq_length > made and (manifest or {}).get("tokenizer") and cfg.data.padding != "packing":
        raise DataError(f"data.seq_length {cfg.data.seq_length} exceeds the {made} tokens {data_dir} was preprocessed "
                        f"with (its manifest's seq_length); leave data.seq_length unset to use {made}, lower it, or "
                        f"preprocess again with --seq-length {cfg.data.seq_length}")


def check_data(cfg: Config, data_dir: Path, dataset: Any, processor: Any) -> None:
    """Refuse data made by another processor or tokenizer than the model expects; fill vocab_size 0."""
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
    files = ", ".join(str(f) for f in tokenizer.files()) or tokenizer.type_name
    apply_vocab_size(cfg, int(tokenizer.vocab_size), data_dir, files)


def apply_vocab_size(cfg: Config, vocab: int, data_dir: Path, files: str) -> None:
    """Fill every word table's ``vocab_size: 0`` with the data's vocabulary size; refuse one that differs."""
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
                f"{vocab} ({files}); set "
                f"{where}.vocab_size={vocab}, or preprocess with the vocabulary the model was made for")
    for target in cfg.model.targets:
        if getattr(target, "vocab_size", 0) not in (0, vocab):
            raise DataError(f"target {target.label} has vocab_size {target.vocab_size} but the data's vocabulary "
                            f"has {vocab}; set it to {vocab} or 0 (derived)")


def plan_from_header(cfg: Config, data_dir: Path | None) -> None:
    """What a dry run takes from the data, read from ``manifest.json`` alone (no shard is opened): the
    processor check and the vocabulary size; without data every word table must name its vocab_size."""
    import json

    from modaloom.data.storage import MANIFEST

    if data_dir is None:
        resolve_seq_length(cfg, None, None)
    else:
        path = Path(data_dir) / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the dataset manifest ({exc}); is {data_dir} a folder written "
                            f"by `modaloom preprocess`?") from None
        resolve_seq_length(cfg, manifest, data_dir)
        made_by = (manifest.get("processor") or {}).get("name", "?")
        if cfg.data.processor and cfg.data.processor != made_by:
            raise DataError(f"{data_dir} was preprocessed with processor {made_by!r} but the config expects "
                            f"{cfg.data.processor!r}; set data.processor={made_by} or use other data")
        vocab = (manifest.get("tokenizer") or {}).get("vocab_size")
        if vocab:
            apply_vocab_size(cfg, int(vocab), data_dir, f"{data_dir}/tokenizer")
    sections = [("model.embedding", cfg.model.embedding)] + [
        (f"model.embedding.streams.{i}", s) for i, s in enumerate(streams_of(cfg.model.embedding))]
    if cfg.model.tgt_embedding is not None:
        sections.append(("model.tgt_embedding", cfg.model.tgt_embedding))
    for where, section in sections:
        if any(p.startswith("word") for p in section.parts) and not section.vocab_size:
            raise ConfigError(f"{where}.vocab_size is 0 (taken from the data); give --data (only its manifest is "
                              f"read) or set {where}.vocab_size")


def preflight(model: nn.Module, loader_args: dict[str, Any], data_dir: Path) -> None:
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
        from modaloom.embeddings.dual import missing_stream_inputs

        streams = "".join(f"; {line}" for line in missing_stream_inputs(model.config, batch))
        raise DataError(f"batches of {data_dir} (keys {sorted(batch)}) carry no labels for the model's targets "
                        f"{[t.label for t in model.config.targets]}{streams}; preprocess with a matching processor")


@register("task", "pretrain")
class PretrainTask(Task):
    """Pre-training on ``paths.data``; evaluation on ``paths.eval_data`` or a held-out part of the data."""

    name = "pretrain"

    def prepare(self) -> None:
        from modaloom.data.processors.base import processor_from_dataset
        from modaloom.data.storage import open_dataset

        cfg, data_dir = self.cfg, self.paths.data
        if cfg.data.seq_length:
            check_positions(cfg)  # a config error before the data is read
        self.dataset = open_dataset(data_dir)
        resolve_seq_length(cfg, self.dataset.manifest, data_dir)
        masking = {"masking": dict(cfg.data.masking)} if cfg.data.masking else None
        self.processor = processor_from_dataset(self.dataset, cfg.data.seq_length, masking)
        check_data(cfg, data_dir, self.dataset, self.processor)
        if self.paths.eval_data:
            check_same_kind(data_dir, self.dataset.manifest, self.paths.eval_data,
                            open_dataset(self.paths.eval_data).manifest)

    def identity(self) -> dict[str, Any]:
        """The data's kind plus what a resumed data position depends on: the record count and the options the
        records were made with (packing, dup_factor...; masking is applied at load, so it may change)."""
        manifest = self.dataset.manifest
        entry = manifest.get("processor") or {}
        options = {k: v for k, v in (entry.get("options") or {}).items() if k != "masking"}
        return {**dataset_identity(manifest), "records": manifest.get("records"),
                "processor_options": {**options, "seq_length": entry.get("seq_length")}}

    def holdout(self) -> float:
        """Records of ``paths.data`` held out for evaluation (none with --eval-data or without evaluation)."""
        train = self.cfg.train
        return train.eval_holdout if (train.eval_every and not self.paths.eval_data) else 0

    def loader_args(self, info: DistInfo) -> dict[str, Any]:
        cfg = self.cfg
        return {"batch_size": cfg.train.batch_size, "seed": cfg.train.seed, "seq_length": cfg.data.seq_length,
                "padding": cfg.data.padding, "rank": info.rank, "world_size": info.world_size,
                "num_workers": cfg.data.num_workers, "shuffle": cfg.data.shuffle, "holdout": self.holdout()}

    def train_loader(self, info: DistInfo, model: nn.Module) -> Iterable[Batch]:
        from modaloom.data.loader import Loader

        args = self.loader_args(info)
        preflight(model, args, self.paths.data)
        return Loader(self.dataset, self.processor, split="train", **args)

    def eval_loader(self, info: DistInfo) -> Iterable[Batch] | None:
        from modaloom.data.loader import Loader, build_loader

        eval_args = {**self.loader_args(info), "shuffle": False, "drop_last": False, "num_workers": 0}
        if self.paths.eval_data:
            return build_loader(self.paths.eval_data, split="all", **{**eval_args, "holdout": 0})
        if eval_args["holdout"]:
            return Loader(self.dataset, self.processor, split="heldout", **eval_args)
        return None

    def export_dirs(self) -> dict[str, Path]:
        return {"tokenizer": self.paths.data / "tokenizer"}

    def export_json(self) -> dict[str, Any]:
        """The training data's processor and options (``preprocessing.json``), for runs on raw input."""
        from modaloom.data.preprocessing_record import PREPROCESSING_NAME, record_from_manifest

        record = record_from_manifest(self.dataset.manifest, self.paths.data)
        return {PREPROCESSING_NAME: record} if record is not None else {}

    def data_description(self) -> str:
        return f"{len(self.dataset)} records in {self.paths.data}"
