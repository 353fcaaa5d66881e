"""The Task contract: one job kind (pre-training, a fine-tuning task...) as a plug-in on the one Trainer.

A task bundles what differs between jobs and nothing else:

- data: ``prepare()`` checks the config and data before any process starts training; ``train_loader(info)``
  and ``eval_loader(info)`` build the loaders of this rank;
- model: ``build_model()`` from the config, or from a saved model folder (``paths.init_from``), with every
  missing or unexpected key listed (``initial_model``);
- loss: ``loss(model, batch)``, by default ``model(batch).loss`` and ``.metrics``;
- evaluation: ``eval_step(model, batch)`` -> per-example tensors, ``reduce(outputs)`` -> metrics, exact over
  the whole set and all ranks (the Trainer gathers the outputs; see ``modaloom.train.steps``);
- after-step hooks: ``hooks(model)`` (momentum encoders, queues; their state is checkpointed);
- prediction: ``predict(model, loader, path)`` writes one JSON record per example (``prediction_records``);
- export: ``export(checkpoint)`` -> the final model folder.

``run()`` is the job: checks, process group, output directory, model, loaders, Trainer, fit, export,
summary. Tasks register with ``@register("task", name)``; ``modaloom.registry.get("task", name)`` finds
them. A new task is a module in ``modaloom/tasks/`` imported by ``modaloom/tasks/__init__.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modaloom.atomic import atomic_file, atomic_write_json, recover_stale, swap_directory, temp_sibling
from modaloom.errors import CheckpointError, ConfigError, DataError
from modaloom.outputs import LOCK_NAME, check_not_input, run_lock
from modaloom.train.hooks import part_hooks
from modaloom.train.steps import ModelSteps, Outputs

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modaloom.batch import Batch
    from modaloom.config import Config
    from modaloom.train.distributed import DistInfo


@dataclass
class JobPaths:
    """Where a job reads and writes: ``resume`` is None, "latest" or a checkpoint directory."""

    data: Path
    out: Path
    eval_data: Path | None = None
    resume: str | None = None
    init_from: Path | None = None  # a saved model folder (``Model.save`` / exported) to start from


@dataclass
class InitReport:
    """What loading a model folder into a configured model left out, listed so that nothing is silent."""

    source: Path
    missing: list[str] = field(default_factory=list)  # the model's keys the folder lacks (left initialised)
    unexpected: list[str] = field(default_factory=list)  # the folder's keys the model has no place for

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} keys not in the folder, left randomly initialised: "
                         f"{', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} keys of the folder unused: {', '.join(self.unexpected)}")
        return f"weights from {self.source}: " + ("; ".join(parts) if parts else "every key matched")


# ---------------------------------------------------------------- config and model


def load_job_config(path: str | Path, overrides: list[str]) -> Config:
    """A Config from a job file, or from a model-only file (then ``model`` is the whole file)."""
    from modaloom.config import config_dict, load_config

    data, _ = config_dict(str(path))
    if set(data) & {"model", "data", "train"}:
        return load_config(str(path), overrides, require_parts=True)
    try:
        return load_config(None, overrides, base={"model": data}, require_parts=True)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def initial_model(model_config: Any | None, init_from: Path | None = None) -> tuple[nn.Module, InitReport | None]:
    """The model a job starts from: built from ``model_config``; or ``modaloom.load(init_from)`` when there is
    no config (every key checked); or built from the config with the folder's weights loaded into it.

    In the last case shape mismatches are refused (``load_weights_checked``) and the keys one side lacks are
    returned in the report, for the task to refuse (``strict_init``) or to show.
    """
    from modaloom.model import WEIGHTS_NAME, build_model, load
    from modaloom.weights import load_weights_checked, read_weights

    if init_from is None:
        if model_config is None:
            raise ConfigError("no model: give a config with a model section or a model folder to start from")
        return build_model(model_config), None
    if model_config is None:
        return load(init_from), InitReport(Path(init_from))
    model = build_model(model_config)
    state = read_weights(Path(init_from) / WEIGHTS_NAME)
    missing, unexpected = load_weights_checked(model, state, str(init_from), strict=False)  # shapes still checked
    return model, InitReport(Path(init_from), missing, unexpected)


# ---------------------------------------------------------------- output files


RUN_MARKERS = ("checkpoints", "metrics.jsonl", "summary.json", LOCK_NAME)


def check_run_folder(out: Path) -> None:
    """``--out`` is new, empty, or a run folder a job wrote (it has one of RUN_MARKERS); a folder of other
    files is refused, because a run writes config.json, model/ and more into it."""
    if not out.is_dir() or any((out / marker).exists() for marker in RUN_MARKERS):
        return
    others = sorted(p.name for p in out.iterdir())
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise ConfigError(f"--out {out} holds files that are not a modaloom run ({shown}); a run writes "
                          f"config.json, model/, checkpoints/ and logs into it: choose a new or empty folder")


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


def export_model(ckpt: Path, out: Path, extra_dirs: dict[str, Path] | None = None,
                 extra_json: dict[str, Any] | None = None) -> Path:
    """``<out>/model``: the checkpoint's weights and config (loadable by ``modaloom.load``) plus
    ``extra_dirs`` (name -> directory, e.g. the tokenizer) and ``extra_json`` (file name -> object, e.g. the
    preprocessing record), built beside it and swapped in whole: nothing of a previous export (a stale
    tokenizer) survives, and a crash leaves the old or the new folder."""
    from modaloom.train.checkpoint import write_model_folder

    final = out / "model"
    recover_stale(final)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        write_model_folder(ckpt, tmp)  # a sharded checkpoint is consolidated here, on this process
        for name, source in (extra_dirs or {}).items():
            if source.is_dir():
                shutil.copytree(source, tmp / name)
        for name, payload in (extra_json or {}).items():
            atomic_write_json(tmp / name, payload)
        swap_directory(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, written to a temp file beside ``path`` and renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def exit_status(summary: dict[str, Any]) -> int:
    """The process exit status of a job: 0 when it finished, 128 + the signal when SIGINT/SIGTERM stopped it
    (130 / 143, as a shell reports a process killed by that signal), so ``pretrain && convert`` stops."""
    if summary.get("interrupted"):
        return 128 + int(summary.get("stop_signal") or 15)
    return 0


def set_aside_later_checkpoints(out: Path, step: int) -> list[Path]:
    """Move the complete checkpoints of ``out`` past ``step`` into ``checkpoints/abandoned/`` (kept, not
    deleted): a run resumed from an earlier checkpoint starts a new branch, and ``--resume`` must continue
    that branch, not the step numbers of the one it left."""
    from modaloom.train.checkpoint import checkpoint_root, complete_checkpoints

    moved = []
    for found_step, path in complete_checkpoints(out):
        if found_step <= step:
            continue
        target = checkpoint_root(out) / "abandoned" / path.name
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{path.name}.{n}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved.append(target)
    return moved


# ---------------------------------------------------------------- the contract


class Task(ModelSteps):
    """Base of every task; subclasses override what their job does differently (see the module docstring).

    ``loss``, ``eval_step`` and ``reduce`` come from ``ModelSteps`` (the model's loss and metrics; evaluation
    = mean over batches); a task with per-example metrics overrides ``eval_step`` and ``reduce``.
    """

    name: ClassVar[str] = ""
    strict_init: ClassVar[bool] = True  # refuse a model folder whose keys differ from the configured model

    def __init__(self, cfg: Config, paths: JobPaths) -> None:
        self.cfg = cfg
        self.paths = paths
        self.init_report: InitReport | None = None
        self.strategy_report: list[str] = []  # train.init_from / lora / freeze, shown at the start

    # ---- data
    def prepare(self) -> None:
        """Check the config and the data before the process group starts (every rank runs it)."""

    def train_loader(self, info: DistInfo, model: nn.Module) -> Iterable[Batch]:
        """This rank's training batches (``model`` is given for a preflight run)."""
        raise NotImplementedError(f"task {self.name!r} defines no train_loader")

    def eval_loader(self, info: DistInfo) -> Iterable[Batch] | None:
        """This rank's evaluation batches, every record once over all ranks; None: no evaluation."""
        return None

    # ---- model
    def build_model(self) -> nn.Module:
        """The model to train: from the config, or from ``paths.init_from`` (keys compared, never silent)."""
        model, report = initial_model(self.cfg.model, self.paths.init_from)
        if report is not None and self.strict_init and (report.missing or report.unexpected):
            raise CheckpointError(f"task {self.name} needs the model folder to match the config exactly; "
                                  f"{report.describe()}")
        self.init_report = report
        return model

    def hooks(self, model: nn.Module) -> list[Any]:
        """After-step hooks for the Trainer (``modaloom.train.hooks``): those the model's parts ask for."""
        return part_hooks(model)

    # ---- prediction
    def prediction_records(self, outputs: Outputs) -> Iterator[dict[str, Any]]:
        """One JSON record per example from the gathered ``eval_step`` outputs."""
        raise ConfigError(f"task {self.name!r} writes no predictions; use a task that defines them")

    def predict(self, model: Any, loader: Iterable[Batch], path: Path,
                info: DistInfo | None = None, device: torch.device | None = None) -> Path | None:
        """Run ``eval_step`` over ``loader`` on every rank, on ``device`` (default: the model's), and rank 0 writes
        ``prediction_records`` to ``path`` as JSONL (temp file, then rename). Returns the path on rank 0, None
        elsewhere."""
        import torch

        from modaloom.train import distributed as dist_utils
        from modaloom.train.steps import collect_outputs

        if type(self).prediction_records is Task.prediction_records:  # refuse before running the model
            raise ConfigError(f"task {self.name!r} writes no predictions; use a task that defines them")
        info = info or dist_utils.current()
        if device is None:  # where the model's weights are (a model loaded for prediction may stay on the CPU)
            weights = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
            device = weights.device if weights is not None else info.device
        outputs = collect_outputs(self, model, loader, device)
        if not info.is_main:
            return None
        return write_jsonl(path, self.prediction_records(outputs))

    # ---- export
    def export_dirs(self) -> dict[str, Path]:
        """Directories copied into the exported model folder (name -> source)."""
        return {}

    def export_json(self) -> dict[str, Any]:
        """JSON files written into the exported model folder (file name -> object)."""
        return {}

    def export(self, checkpoint: Path) -> Path:
        """The final model folder ``<out>/model`` from the last checkpoint."""
        return export_model(checkpoint, self.paths.out, self.export_dirs(), self.export_json())

    # ---- the job
    def run(self) -> dict[str, Any]:
        """The whole job under this process (every torchrun process runs it); returns the summary."""
        from modaloom.train import distributed as dist_utils

        self.prepare()
        check_not_input(self.paths.out, self.inputs())
        check_run_folder(self.paths.out)
        first_process = os.environ.get("RANK", "0") == "0"  # before the process group exists
        with run_lock(self.paths.out, f"modaloom {self.name}") if first_process else contextlib.nullcontext():
            info = dist_utils.setup()
            self.resume_after_restart(info)
            if info.is_main:
                check_out_dir(self.paths.out, self.paths.resume)
            dist_utils.barrier()
            dist_utils.check_shared_folder(self.paths.out, info)
            summary = self.train(info)
            # the goodbye barrier only after success: on an error the other ranks may never reach it, and a
            # rank waiting there forever would hide the error from torchrun (no report, no restart)
            dist_utils.teardown()
            return summary

    def resume_after_restart(self, info: DistInfo) -> None:
        """Under ``torchrun --max-restarts``, restarted workers continue the latest complete checkpoint of
        ``--out`` without being told (``paths.resume`` becomes "latest"); an explicit ``--resume-from`` is
        kept, and is resumed again, which reproduces the same run. Every rank must call it."""
        from modaloom.train import distributed as dist_utils

        restarts = dist_utils.restart_count()
        if not restarts or self.paths.resume is not None:
            return
        self.paths.resume = "latest"
        if info.is_main:
            print(f"modaloom {self.name}: torchrun restarted the workers (restart {restarts}); resuming the "
                  f"latest complete checkpoint in {self.paths.out}", file=sys.stderr)

    def inputs(self) -> list[Path]:
        """Every file or folder the job reads; the run folder may not be, contain or lie inside one."""
        return [p for p in (self.paths.data, self.paths.eval_data, self.paths.init_from) if p is not None]

    def identity(self) -> dict[str, Any]:
        """What the training data is (e.g. processor and tokenizer fingerprint), stored in every checkpoint
        so that a resumed run on other data is refused; empty: nothing to compare."""
        return {}

    def resume_checkpoint(self, info: DistInfo | None = None) -> Path | None:
        """The checkpoint ``paths.resume`` names (None: start fresh), checked to belong to this model and data
        and to lie before ``train.steps``. Resuming an earlier checkpoint than the newest sets the later ones
        aside (``checkpoints/abandoned/``), so that ``--resume`` afterwards continues this branch."""
        from modaloom.config_schema import to_dict
        from modaloom.train import distributed as dist_utils
        from modaloom.train.checkpoint import STATE_FILE, check_same_model, latest_checkpoint, read_json

        if not self.paths.resume:
            return None
        path = latest_checkpoint(self.paths.out) if self.paths.resume == "latest" else Path(self.paths.resume)
        if path is None:
            return None
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"--resume {path}: not a complete checkpoint directory")
        check_same_model(path, to_dict(self.cfg.model))
        state = read_json(path / STATE_FILE)
        saved, current = state.get("job") or {}, self.identity()
        changed = sorted(k for k in set(saved) & set(current) if saved[k] != current[k])
        if changed:
            shown = "; ".join(f"{k}: checkpoint {saved[k]!r}, now {current[k]!r}" for k in changed)
            raise DataError(f"checkpoint {path} was trained on other data ({shown}); resume with the data it was "
                            f"trained on, or start a fresh run with another --out")
        step = int(state["step"])
        if step > self.cfg.train.steps:
            raise ConfigError(f"checkpoint {path} is at step {step}, past train.steps {self.cfg.train.steps}; "
                              f"raise --steps to continue it, or resume an earlier checkpoint")
        if info is None or info.is_main:
            moved = set_aside_later_checkpoints(self.paths.out, step)
            if moved:
                print(f"modaloom {self.name}: resuming step {step}, an earlier checkpoint than the newest; "
                      f"{len(moved)} later checkpoint(s) moved to {moved[0].parent} (kept, not deleted)",
                      file=sys.stderr)
        dist_utils.barrier()
        return path

    def train(self, info: DistInfo) -> dict[str, Any]:
        """Model, loaders, Trainer, fit; then (rank 0) export and the printed summary."""
        import torch

        from modaloom.config_schema import to_dict
        from modaloom.freeze import apply_strategies
        from modaloom.train.memory import set_mmap_threshold
        from modaloom.train.trainer import Trainer

        cfg, out = self.cfg, self.paths.out
        resume_from = self.resume_checkpoint(info)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        set_mmap_threshold(cfg.train.mmap_threshold_mb)
        torch.manual_seed(cfg.train.seed)
        model = self.build_model()
        self.strategy_report = apply_strategies(model, cfg.train)
        train_loader = self.train_loader(info, model)
        eval_loader = self.eval_loader(info) if cfg.train.eval_every else None
        if info.is_main:
            atomic_write_json(out / "config.json", to_dict(cfg), indent=1)
            self.announce(model, info)
        trainer = Trainer(model, cfg.train, train_loader, out, eval_loader=eval_loader,
                          model_config=to_dict(cfg.model), info=info, seq_length=cfg.data.seq_length,
                          task=self, hooks=self.hooks(model), job_identity=self.identity())
        summary = trainer.fit(resume=resume_from if resume_from is not None else False)
        if info.is_main:
            if summary.get("checkpoint") and not summary["interrupted"] and summary["steps_this_run"]:
                summary["model_dir"] = str(self.export(Path(summary["checkpoint"])))
            elif not summary["steps_this_run"] and (out / "model").is_dir():
                summary["model_dir"] = str(out / "model")
            self.report(summary)
        return summary

    def data_description(self) -> str:
        """What the job trains on, for the start line (e.g. ``1,000 records in data/``); empty: not said."""
        return ""

    def announce(self, model: nn.Module, info: DistInfo) -> None:
        """The line printed (stderr, rank 0) before training starts."""
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        batch = self.cfg.train.batch_size * self.cfg.train.grad_accum_steps * info.world_size
        data = self.data_description()
        print(f"modaloom {self.name}: {params:,} parameters, {data + ', ' if data else ''}{info.world_size} "
              f"process(es) on {info.device}, global batch {batch}", file=sys.stderr)
        if self.init_report is not None:
            print(f"modaloom {self.name}: {self.init_report.describe()}", file=sys.stderr)
        for line in self.strategy_report:
            print(f"modaloom {self.name}: {line}", file=sys.stderr)

    def report(self, summary: dict[str, Any]) -> None:
        """The lines printed (stdout, rank 0) after training: where the outputs are, and the speed."""
        if summary["interrupted"]:
            print(f"interrupted at step {summary['steps']}; checkpoint saved in {summary['checkpoint']}; "
                  f"continue with --resume (the final model is written when the run completes)", file=sys.stderr)
            return
        if not summary["steps_this_run"]:
            print(f"{self.paths.out} already holds this run, complete at step {summary['steps']} "
                  f"(train.steps {self.cfg.train.steps}); nothing to do; model: {summary.get('model_dir')}",
                  file=sys.stderr)
            return
        print(f"loss curve: {summary.get('curves_png')}\nsummary:    {summary.get('summary_json')}\n"
              f"model:      {summary.get('model_dir')}\n"
              f"{summary['tokens_per_second']:.0f} tokens/s, {summary['samples_per_second']:.1f} samples/s, "
              f"MFU {summary['mfu']}, peak RSS {summary['peak_rss_mb']:.0f} MB")
