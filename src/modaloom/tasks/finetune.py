"""What every fine-tuning task shares: its config, tokenizer, best-dev checkpoint, export and test evaluation.

- config (``finetune_config``): ``--model DIR`` takes the model section of a saved folder (pre-trained,
  converted or fine-tuned); ``--config C`` a config file or zoo name (random init). Both get the fine-tuning
  defaults of TencentPretrain's ``run_classifier.py`` (lr 2e-5, 10% linear warm-up, batch 32, AdamW without
  bias correction: its lr 2e-5 assumes it) under the command-line overrides; the task replaces the targets by
  its own head in ``prepare``.
- tokenizer (``resolve_tokenizer``): the model folder's ``tokenizer/`` (a pretrain run's or a fine-tuned
  model's), else the HF files a converted folder holds (``vocab.txt``), else ``--vocab``.
- best dev checkpoint: evaluation runs after every epoch on the dev file; when the task's selection metric
  improves, the weights are saved to ``<out>/best/`` (``BestDev`` keeps the best value in the checkpoints so
  that a resumed run continues the comparison); ``<out>/model`` is exported from ``best/``.
- the exported ``config.json`` carries a ``task`` section (name, options, labels, seq_length) beside the model,
  and ``model/tokenizer/`` the tokenizer, so that ``predict``/``evaluate`` need nothing else.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modaloom.atomic import atomic_write_json
from modaloom.errors import CheckpointError, ConfigError, DataError
from modaloom.tasks.base import Task

if TYPE_CHECKING:
    from torch import nn

    from modaloom.config import Config
    from modaloom.data.tokenizers import Tokenizer
    from modaloom.tasks.base import JobPaths
    from modaloom.train.distributed import DistInfo

FINETUNE_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 2e-5, "warmup_ratio": 0.1, "schedule": "linear", "batch_size": 32,
                                           "adam_bias_correction": False, "group_by_length": True}
BEST_DIR = "best"
CPU_AUTOCAST_PAD = 16  # fine-tuning batches pad to a multiple of this many tokens under CPU autocast


@dataclass
class FinetuneInputs:
    """The fine-tuning job's files and choices beside the config: test file, vocabulary, task options."""

    test: Path | None = None
    vocab: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # task.<key>=value from the command line
    epochs: int = 3
    overridden: set[str] = field(default_factory=set)  # config keys the user set (not derived from epochs)


def read_model_folder_config(model_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of a modaloom model folder, refused with a clear message when absent."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} is not a modaloom model folder (no config.json); convert a HuggingFace "
                              f"or TencentPretrain model with `modaloom convert` first")
    return json.loads(path.read_text(encoding="utf-8"))


def finetune_config(model_dir: Path | None, config: str | None, overrides: list[str],
                    keep_targets: tuple[str, ...] = ()) -> Config:
    """The job config: the model of ``model_dir`` or of ``config``, fine-tuning train defaults, overrides.

    The source model's targets of the types in ``keep_targets`` (``"*"``: all) stay (e.g. ``lm`` for a task that
    generates); when none does, a ``cls`` placeholder stands in until the task sets its head in ``prepare``.
    """
    from modaloom.config import config_dict, load_config
    from modaloom.model_config import model_section_from_saved

    if (model_dir is None) == (config is None):
        raise ConfigError("give exactly one of --model DIR (start from a saved model) or --config C (random init)")
    if model_dir is not None:
        data: dict[str, Any] = {"model": model_section_from_saved(read_model_folder_config(model_dir))}
    else:
        data, _ = config_dict(str(config))
        if not set(data) & {"model", "data", "train"}:
            data = {"model": data}
    kept = [t for t in data["model"].get("targets") or []
            if isinstance(t, dict) and ("*" in keep_targets or t.get("type") in keep_targets)]
    data["model"] = {**data["model"], "targets": kept or [{"type": "cls"}]}  # the task sets its head in prepare()
    data["train"] = {**FINETUNE_TRAIN_DEFAULTS, **(data.get("train") or {})}
    data["data"] = {"seq_length": (data.get("data") or {}).get("seq_length", 128)}
    return load_config(None, overrides, base=data, require_parts=True)


def resolve_tokenizer(model_dir: Path | None, vocab: str) -> tuple[Tokenizer, str]:
    """The tokenizer and where it came from: ``--vocab``, else ``<model>/tokenizer/``, else ``<model>/vocab.txt``."""
    from modaloom.data.tokenizers import (
        TOKENIZER_JSON,
        guess_tokenizer_type,
        load_tokenizer,
        load_tokenizer_dir,
    )

    if vocab:
        return load_tokenizer({"type": guess_tokenizer_type(vocab), "vocab": vocab}), vocab
    if model_dir is not None:
        model_dir = Path(model_dir)
        if (model_dir / "tokenizer" / TOKENIZER_JSON).is_file():
            return load_tokenizer_dir(model_dir / "tokenizer"), str(model_dir / "tokenizer")
        if (model_dir / "vocab.txt").is_file():
            lowercase = True
            hf_config = model_dir / "tokenizer_config.json"
            if hf_config.is_file():
                lowercase = bool(json.loads(hf_config.read_text(encoding="utf-8")).get("do_lower_case", True))
            spec = {"type": "wordpiece", "vocab": str(model_dir / "vocab.txt"), "lowercase": lowercase}
            return load_tokenizer(spec), str(model_dir / "vocab.txt")
    where = f"{model_dir} holds no tokenizer/ nor vocab.txt" if model_dir is not None else "--config builds a new model"
    raise ConfigError(f"no tokenizer: {where}; pass --vocab VOCAB_FILE")


def check_vocabulary(cfg: Config, tokenizer: Tokenizer, where: str, embedding: Any = None) -> None:
    """A tokenizer whose ids exceed the model's embedding rows cannot run: refuse it (0 = fill it in).
    ``embedding``: the section holding the word table (a stream of a dual model); default the embedding."""
    embedding = embedding if embedding is not None else cfg.model.embedding
    if embedding.vocab_size == 0:
        embedding.vocab_size = int(tokenizer.vocab_size)
    elif tokenizer.vocab_size > embedding.vocab_size:
        raise DataError(f"tokenizer {where} has {tokenizer.vocab_size} tokens but the model's embedding has "
                        f"{embedding.vocab_size} rows; use the model's own vocabulary")


class BestDev:
    """After-step hook that follows the step and model, and keeps the best dev value (checkpointed)."""

    name = "best_dev"

    def __init__(self) -> None:
        self.best: float | None = None
        self.best_step = 0
        self.step = 0
        self.model: nn.Module | None = None
        self.is_main = True

    def __call__(self, trainer: Any) -> None:
        self.step, self.model, self.is_main = trainer.step, trainer.raw_model, trainer.info.is_main

    def improved(self, value: float, higher_is_better: bool) -> bool:
        """Whether ``value`` beats the best so far (then it becomes the best, at the current step)."""
        if math.isnan(value):
            return False
        if self.best is None or (value > self.best if higher_is_better else value < self.best):
            self.best, self.best_step = value, self.step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), int(state.get("step") or 0)


class FinetuneTask(Task):
    """Base of the fine-tuning tasks: subclasses read data, define the head, the metrics and predictions."""

    strict_init: ClassVar[bool] = False  # a new head and dropped pre-training targets are expected (listed)
    selection_metric: ClassVar[str] = "accuracy"
    kept_targets: ClassVar[tuple[str, ...]] = ()  # source targets kept by ``finetune_config`` ("*": all)
    lower_is_better: ClassVar[tuple[str, ...]] = ("loss", "mse")
    runs_any_model: ClassVar[bool] = False  # `evaluate --task NAME` runs models fine-tuned for other tasks too
    train_examples: list[dict[str, Any]]  # read by ``prepare()``
    dev_examples: list[dict[str, Any]] | None

    def __init__(self, cfg: Config, paths: JobPaths, inputs: FinetuneInputs | None = None) -> None:
        super().__init__(cfg, paths)
        self.inputs_ = inputs or FinetuneInputs()
        self.best = BestDev()
        self.tokenizer: Tokenizer | None = None
        self.evaluating_dev = False

    # ---- to define
    def task_section(self) -> dict[str, Any]:
        """What the exported ``config.json`` records under ``task`` (name, options, labels...)."""
        raise NotImplementedError

    def metrics(self, outputs: dict[str, Any]) -> dict[str, float]:
        """Metrics over gathered ``eval_step`` outputs."""
        raise NotImplementedError

    def test_loader(self, path: Path) -> Any:
        """Batches of a labelled file (the test file), for the final evaluation."""
        raise NotImplementedError

    def loader(self, examples: list[dict[str, Any]], train: bool, info: Any = None) -> Any:
        """Batches of examples read by the task: shuffled and rank-sharded for training, in order otherwise."""
        raise NotImplementedError

    def set_options(self, options: dict[str, Any]) -> None:
        """Task options given to ``evaluate`` (``task.<key>=value``); a task that takes none refuses them."""
        if options:
            raise ConfigError(f"task {self.name!r} takes no options at evaluation, got {sorted(options)}")

    # ---- shared
    def train_loader(self, info: Any, model: Any) -> Any:
        """This rank's training batches of the examples ``prepare()`` read (``self.train_examples``)."""
        return self.bucketed(self.loader(self.train_examples, True, info), info)

    def eval_loader(self, info: Any) -> Any:
        """Dev batches, or None without a dev file (``self.dev_examples``)."""
        return self.bucketed(self.loader(self.dev_examples, False, info), info) if self.dev_examples else None

    def bucketed(self, loader: Any, info: Any) -> Any:
        """``loader`` padding its batches to a multiple of ``CPU_AUTOCAST_PAD`` tokens when the run computes in
        bf16/fp16 on the CPU (``MemoryLoader.pad_multiple`` says why); unchanged elsewhere, where padding to
        the longest example costs less."""
        from modaloom.train.config import resolve_precision

        device = getattr(getattr(info, "device", None), "type", "cpu")
        if hasattr(loader, "pad_multiple") and device == "cpu" and \
                resolve_precision(self.cfg.train.precision, device) in ("bf16", "fp16"):
            loader.pad_multiple = CPU_AUTOCAST_PAD
        return loader

    def set_steps(self, train_examples: int) -> None:
        """``train.steps`` from the epochs (unless given), evaluation and a checkpoint after every epoch."""
        train, given = self.cfg.train, self.inputs_.overridden
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_epoch = max(1, math.ceil(train_examples / (train.batch_size * train.grad_accum_steps * world)))
        self.steps_per_epoch = per_epoch
        if "train.steps" not in given:
            train.steps = per_epoch * self.inputs_.epochs
        if "train.eval_every" not in given:
            train.eval_every = per_epoch
        if "train.eval_batches" not in given:
            train.eval_batches = 0
        if "train.save_every" not in given:
            train.save_every = per_epoch
        if train.parallel == "fsdp":
            raise ConfigError("fine-tuning saves the best dev weights from one process's full model; "
                              "train.parallel=fsdp is not supported here, use ddp")

    def hooks(self, model: nn.Module) -> list[Any]:
        return [self.best, *super().hooks(model)]

    def inputs(self) -> list[Path]:
        return [*super().inputs(), *([self.inputs_.test] if self.inputs_.test else [])]

    def reduce(self, outputs: dict[str, Any]) -> dict[str, float]:
        """Dev metrics; the weights are kept in ``<out>/best`` when the selection metric improves."""
        values = self.metrics(outputs)
        metric = self.selection_metric
        if self.best.model is not None and metric in values:
            if self.best.improved(values[metric], metric not in self.lower_is_better) and self.best.is_main:
                self.best.model.save(self.paths.out / BEST_DIR, extra={"task": self.task_section(),
                                                                       "step": self.best.step})
        return values

    def export(self, checkpoint: Path) -> Path:
        """``<out>/model`` from the best dev weights (the last checkpoint without a dev set), with the task
        section in its config.json, the tokenizer (when the task has one) in ``tokenizer/`` and the
        preprocessing record of the model it started from (``preprocessing.json``, when that has one)."""
        from modaloom.data.preprocessing_record import PREPROCESSING_NAME, read_record
        from modaloom.tasks.base import export_model

        best = self.paths.out / BEST_DIR
        source = best if (best / "model.safetensors").is_file() else checkpoint
        record = read_record(self.paths.init_from)
        with tempfile.TemporaryDirectory(dir=self.paths.out) as tmp:
            extra = {"tokenizer": self.tokenizer.save(Path(tmp) / "tokenizer")} if self.tokenizer is not None else {}
            final = export_model(source, self.paths.out, extra, {PREPROCESSING_NAME: record} if record else None)
        config = json.loads((final / "config.json").read_text(encoding="utf-8"))
        config["task"] = self.task_section()
        atomic_write_json(final / "config.json", config)
        return final

    def train(self, info: DistInfo) -> dict[str, Any]:
        """Fit and export (``Task.train``), then the test file's metrics with the exported model."""
        summary = super().train(info)
        if not info.is_main or summary.get("interrupted") or not summary.get("model_dir"):
            return summary
        summary["best_dev"] = {"metric": self.selection_metric, "value": self.best.best, "step": self.best.best_step}
        if self.inputs_.test is not None:
            from modaloom.model import load
            from modaloom.train.steps import collect_outputs

            model = load(summary["model_dir"], map_location=info.device)
            outputs = collect_outputs(self, model, self.test_loader(self.inputs_.test), info.device)
            test = self.metrics(outputs)
            summary.update({f"test/{k}": v for k, v in test.items()})
            print(f"test ({self.inputs_.test}): " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()),
                  file=sys.stderr)
        if summary.get("summary_json"):
            atomic_write_json(Path(summary["summary_json"]), summary)
        return summary


def saved_task(model_dir: Path, expected: str | None = None) -> dict[str, Any]:
    """The ``task`` section of a fine-tuned model folder; a pre-trained model, or one fine-tuned for another
    task than ``expected``, is refused."""
    data = read_model_folder_config(model_dir)
    section = data.get("task")
    if not isinstance(section, dict) or not section.get("name"):
        raise ConfigError(f"{model_dir} is not a fine-tuned model (its config.json records no task); fine-tune it "
                          f"first with `modaloom finetune --task TASK --model {model_dir} ...`")
    if expected and section["name"] != expected:
        raise ConfigError(f"{model_dir} was fine-tuned for task {section['name']!r}, not {expected!r}")
    return section


def task_for_model(model_dir: Path, expected: str | None = None) -> FinetuneTask:
    """The task object of a fine-tuned model folder, ready for ``predict``/``evaluate`` (no training)."""
    from modaloom import registry
    from modaloom.config import Config
    from modaloom.data.config import DataConfig
    from modaloom.model import saved_model_config
    from modaloom.tasks.base import JobPaths

    wanted = registry.get("task", expected) if expected in registry.names("task") else None
    if getattr(wanted, "runs_any_model", False):  # e.g. zero_shot: runs a model trained for another task
        section = {**(read_model_folder_config(model_dir).get("task") or {}), "name": expected}
    else:
        section = saved_task(model_dir, expected)
    task_cls = registry.get("task", section["name"], where="config.json task.name")
    if not (isinstance(task_cls, type) and issubclass(task_cls, FinetuneTask)):
        raise ConfigError(f"{model_dir}: task {section['name']!r} is not a fine-tuning task")
    data = read_model_folder_config(model_dir)
    cfg = Config(model=saved_model_config(data, str(Path(model_dir) / "config.json")),
                 data=DataConfig(seq_length=int(section.get("seq_length", 128))))
    task = task_cls(cfg, JobPaths(data=Path(model_dir), out=Path(model_dir)))
    task.load_section(Path(model_dir), section)
    return task
