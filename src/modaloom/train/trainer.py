"""One Trainer for pre-training and fine-tuning: any model, any iterable of batches, and a task's step
functions (``train/steps.py``: the loss of a batch, per-example evaluation outputs and their reduction;
by default ``model(batch).loss`` / ``.metrics``).

The loop: micro-batches summed into one optimizer step (gradient accumulation, DDP gradient sync on the
last micro-batch only), autocast for bf16/fp16 (fp16 with a grad scaler), clipping, a learning rate that
is a pure function of the step, a non-finite loss check once per step, periodic evaluation, logging and
atomic checkpoints. SIGINT and SIGTERM finish the current step, save and return. A run resumed from a
checkpoint reproduces the uninterrupted run bit for bit on CPU, provided the loader restores its position
through ``state_dict()`` / ``load_state_dict()`` (or is deterministic, in which case consumed batches are
replayed and skipped). After-step hooks (``train/hooks.py``) run after every optimizer step and their state
is checkpointed. Device placement, activation checkpointing, DDP / FSDP2 and compilation are
``train/parallelize.py``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modaloom import collectives
from modaloom.allocator import active_allocator
from modaloom.batch import Batch, count_real_tokens, count_samples, count_tokens, ids_beyond, to_device
from modaloom.errors import DataError, ModaloomError
from modaloom.train import checkpoint as ckpt
from modaloom.train import distributed as dist_utils
from modaloom.train.config import TrainConfig, resolve_precision
from modaloom.train.flops import flops_per_token, measure_matmul_peak
from modaloom.train.hooks import load_hook_states, save_hook_states
from modaloom.train.memory import release_free_memory
from modaloom.train.monitor import Monitor, peak_rss_mb
from modaloom.train.optim import build_optimizer
from modaloom.train.parallelize import parallelize
from modaloom.train.schedules import lr_at
from modaloom.train.steps import ModelSteps, Outputs, TaskSteps, collect_outputs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(ModaloomError):
    """The loss became NaN or infinite and ``train.nonfinite`` is ``stop``."""


class BatchStream:
    """Endless batches from an epoch-wise iterable, with a resumable position.

    When the loader has ``state_dict()``/``load_state_dict()`` its own state is stored; otherwise the
    number of consumed batches is, and a resumed stream replays and drops that many.
    """

    def __init__(self, loader: Iterable[Batch]) -> None:
        self.loader = loader
        self.iterator: Iterator[Batch] | None = None
        self.consumed = 0
        self._skip = 0

    def __next__(self) -> Batch:
        while True:
            batch = self._draw()
            if self._skip:
                self._skip -= 1
                continue
            self.consumed += 1
            return batch

    def _draw(self) -> Batch:
        if self.iterator is not None:
            try:
                return next(self.iterator)
            except StopIteration:
                pass
        # A torch DataLoader draws its base seed from the global torch RNG when an iterator starts. That
        # draw must not shift the dropout RNG, or a resumed run (which starts an iterator mid-epoch) would
        # diverge from the uninterrupted one: start iterators on a forked RNG.
        with torch.random.fork_rng(devices=[]):
            self.iterator = iter(self.loader)
            try:
                return next(self.iterator)
            except StopIteration:
                raise DataError("the training data yields no batches; check the data directory and batch size") from None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"consumed": self.consumed}
        if hasattr(self.loader, "state_dict"):
            state["loader"] = self.loader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed"])
        self.iterator = None
        if "loader" in state and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["loader"])
        else:
            self._skip = self.consumed


def set_determinism(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class Trainer:
    """Trains ``model`` on ``train_loader`` for ``cfg.steps`` optimizer steps, writing into ``out_dir``."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_loader: Iterable[Batch],
        out_dir: str | Path,
        eval_loader: Iterable[Batch] | None = None,
        model_config: dict[str, Any] | None = None,
        info: dist_utils.DistInfo | None = None,
        seq_length: int = 0,
        task: TaskSteps | None = None,
        hooks: Sequence[Any] = (),
        job_identity: dict[str, Any] | None = None,
    ) -> None:
        self.info = info or dist_utils.current()
        # train.precision=auto is settled once, for this device; everything below reads the settled value
        cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, self.info.device.type))
        self.cfg = cfg
        self.job_identity = dict(job_identity or {})  # what the data is (processor, tokenizer), checkpointed
        self.device = self.info.device
        self.out_dir = Path(out_dir)
        self.model_config = model_config
        self.seq_length = seq_length
        self.matmul_peak: float | None = None  # matmul FLOP/s for the MFU, measured when fit starts
        set_determinism(cfg)
        placed = parallelize(model, cfg, self.info)
        self.raw_model, self.model, self.forward_model = placed.raw, placed.model, placed.forward
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.task: TaskSteps = task if task is not None else ModelSteps()
        self.hooks = list(hooks)
        self.autocast_dtype = DTYPES[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.stream = BatchStream(train_loader)
        self.eval_loader = eval_loader
        # every evaluation reads the same held-out batches: a resumable loader is put back to where it
        # started (epoch 0, position 0) before each one, so eval curves compare like with like
        self._eval_start = eval_loader.state_dict() if hasattr(eval_loader, "state_dict") else None
        self.step = 0
        self.skipped_steps = 0
        self.stop_signal: int | None = None
        self.monitor: Monitor | None = None

    # ------------------------------------------------------------ state

    def resume(self, checkpoint_dir: str | Path | None = None) -> Path | None:
        """Restore the latest (or the given) checkpoint; returns its path, None when there is none."""
        path = Path(checkpoint_dir) if checkpoint_dir else ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            return None
        state, rank_state = ckpt.load_checkpoint(
            path, self.model, self.optimizer, self.model_config, self.info.rank, self.info.world_size
        )
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(rank_state["data"])
        load_hook_states(self.hooks, rank_state.get("hooks", []), rank_state.get("tensors", {}), str(path))
        return path

    def save(self) -> Path:
        trainer_state = {
            "skipped_steps": self.skipped_steps,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "job": self.job_identity,
        }
        hook_entries, hook_tensors = save_hook_states(self.hooks)
        return ckpt.save_checkpoint(
            self.out_dir, self.step, self.model, self.optimizer, trainer_state,
            {"data": self.stream.state_dict(), "hooks": hook_entries}, self.model_config, self.cfg.keep_last,
            self.info.rank, self.info.world_size, rank_tensors=hook_tensors, sharded=self.sharded_checkpoints,
        )

    @property
    def sharded_checkpoints(self) -> bool:
        """``train.checkpoint_format`` resolved: auto is sharded for FSDP2 on more than one process."""
        fmt = self.cfg.checkpoint_format
        if fmt == "auto":
            return self.cfg.parallel == "fsdp" and self.info.distributed
        return fmt == "sharded"

    # ------------------------------------------------------------ one step

    def matmul_dtype(self) -> torch.dtype:
        """The dtype the step's matmuls run in (autocast's under bf16/fp16, on the CPU too): MFU divides by
        that dtype's measured peak, since a CPU with AMX runs bf16 matmuls several times faster than fp32."""
        return self.autocast_dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _forward_backward(self, batch: Batch, sync: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        no_sync = getattr(self.model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with context:
            with self._autocast():
                try:
                    loss, metrics = self.task.loss(self.forward_model, batch)
                except IndexError as exc:  # e.g. a token id beyond the vocabulary of the model's tables
                    raise DataError(
                        f"training batch #{self.stream.consumed} (keys {sorted(batch)}) does not fit the model: "
                        f"{exc}; were the data and the model made with the same vocabulary and sizes?"
                    ) from None
            if loss is None:
                raise DataError(f"the model computed no loss for a batch with keys {sorted(batch)}; "
                                f"the batch lacks the labels its targets need")
            self.scaler.scale(loss / self.cfg.grad_accum_steps).backward()
        return loss.detach().float(), metrics

    def checked_ids(self, batch: Batch) -> Batch:
        """``batch`` once its ``input_ids`` fit the model's word table (a one-line DataError otherwise, on every
        device alike; see ``batch.ids_beyond``)."""
        embedding = getattr(self.raw_model, "embedding", None)
        table = embedding.word_embedding() if hasattr(embedding, "word_embedding") else None
        weight = getattr(table, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return batch
        bad = ids_beyond(batch, "input_ids", weight.shape[0])
        if bad is not None:
            raise DataError(f"training batch #{self.stream.consumed} (keys {sorted(batch)}) does not fit the model: "
                            f"index out of range: token id {bad} in input_ids, but the word table has "
                            f"{weight.shape[0]} rows; were the data and the model made with the same vocabulary?")
        return batch

    def train_step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[Batch]]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns mean loss, metrics, batches."""
        accum = self.cfg.grad_accum_steps
        losses, batches = [], []
        metric_sums: dict[str, torch.Tensor] = {}
        for hook in self.hooks:
            before = getattr(hook, "before_step", None)
            if before is not None:
                before(self)
        for micro in range(accum):
            batch = to_device(self.checked_ids(next(self.stream)), self.device)
            loss, metrics = self._forward_backward(batch, sync=micro == accum - 1)
            losses.append(loss)
            batches.append(batch)
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0) + value.detach().float()
        stacked = torch.stack(losses)
        flags = torch.stack([(~torch.isfinite(stacked)).any().float(),
                             torch.tensor(float(self.stop_signal is not None), device=stacked.device)])
        collectives.all_reduce_sum(flags)
        nonfinite, stop = flags.tolist()
        if stop:
            self.stop_signal = self.stop_signal or signal.SIGTERM
        if nonfinite:
            self._handle_nonfinite(stacked, batches)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, self.cfg)
            if self.cfg.clip_norm > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        for hook in self.hooks:
            hook(self)
        return stacked.mean(), {k: v / accum for k, v in metric_sums.items()}, batches

    def _handle_nonfinite(self, losses: torch.Tensor, batches: list[Batch]) -> None:
        bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
        first_index = self.stream.consumed - len(batches)
        where = ", ".join(
            f"micro-batch {i} (training batch #{first_index + i}, loss {losses[i].item()})" for i in bad
        ) or "another rank's batch"
        if self.cfg.nonfinite == "skip":
            self.skipped_steps += 1
            if self.monitor:
                self.monitor.message(f"step {self.step + 1}: non-finite loss at {where}; update skipped")
            return
        dumped = ""
        if bad and self.info.is_main:
            from safetensors.torch import save_file

            path = self.out_dir / f"nonfinite-step-{self.step + 1}.safetensors"
            batch = {k: v.detach().cpu().contiguous() for k, v in batches[bad[0]].items() if isinstance(v, torch.Tensor)}
            save_file(batch, str(path))
            dumped = f"; the batch is saved in {path}"
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step + 1}, {where}{dumped}; lower train.lr, keep train.clip_norm > 0, "
            f"use train.precision=bf16 instead of fp16, or set train.nonfinite=skip to skip such steps"
        )

    # ------------------------------------------------------------ evaluation

    def eval_outputs(self, loader: Iterable[Batch] | None = None, max_batches: int | None = None) -> Outputs:
        """The task's per-example ``eval_step`` outputs over ``loader`` (default: the eval loader, at most
        ``cfg.eval_batches`` batches per rank, 0 = all), concatenated over batches and ranks in rank order.

        Every rank must call it (the outputs are gathered); every rank receives the whole set.
        """
        if loader is None:
            loader = self.eval_loader
            if self._eval_start is not None:
                loader.load_state_dict(self._eval_start)  # type: ignore[union-attr]
        limit = self.cfg.eval_batches if max_batches is None else max_batches
        return collect_outputs(self.task, self.forward_model, loader, self.device, limit, self._autocast)

    def evaluate(self) -> dict[str, float]:
        """The task's ``reduce`` over the eval loader's gathered outputs, keys prefixed ``eval/``."""
        if self.eval_loader is None:
            return {}
        outputs = self.eval_outputs()
        if not outputs:
            return {}
        return {f"eval/{k}": float(v) for k, v in self.task.reduce(outputs).items()}

    # ------------------------------------------------------------ the loop

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def fit(self, resume: bool | str | Path = False) -> dict[str, Any]:
        """Train to ``cfg.steps`` (continuing the latest checkpoint when ``resume``); returns the summary."""
        if self.info.is_main:
            ckpt.remove_incomplete(self.out_dir)
        # the MFU's matmul probe runs now, before optimizer state and activations exist: its three 2048^2
        # matrices (48 MiB in fp32) measured at the end of a run used to set a small model's peak RSS
        self.matmul_peak = measure_matmul_peak(self.device, self.matmul_dtype()) if self.seq_length else None
        dist_utils.barrier()
        resumed_from = None
        if resume:
            resumed_from = self.resume(resume if isinstance(resume, (str, Path)) else None)
        if resumed_from is None:
            torch.manual_seed(self.cfg.seed + 1000 * self.info.rank)
        self.monitor = Monitor(self.out_dir, self.cfg.steps, self.step, self.info.is_main,
                               self.cfg.progress, self.cfg.tensorboard)
        if resumed_from is not None:
            self.monitor.message(f"resumed from {resumed_from} at step {self.step}")
        previous_handlers = self._install_signal_handlers()
        self.model.train()
        start_step, last_saved = self.step, None
        tokens = samples = 0
        window_tokens = window_samples = 0
        # non-padding tokens, kept on the device (summed without a sync per step; read when logged)
        real_tokens = torch.zeros((), dtype=torch.int64, device=self.device)
        window_real = torch.zeros((), dtype=torch.int64, device=self.device)
        measured_real = torch.zeros((), dtype=torch.int64, device=self.device)
        window_loss = torch.zeros((), device=self.device)
        window_metrics: dict[str, torch.Tensor] = {}
        window_steps = 0
        last_eval: dict[str, float] = {}
        clock = time.perf_counter()
        measured_since = measured_tokens = measured_samples = None
        window_start = clock
        try:
            while self.step < self.cfg.steps and self.stop_signal is None:
                loss, metrics, batches = self.train_step()
                step_tokens = sum(count_tokens(b) for b in batches) * self.info.world_size
                step_samples = sum(count_samples(b) for b in batches) * self.info.world_size
                step_real = sum(count_real_tokens(b).to(self.device) for b in batches) * self.info.world_size
                real_tokens += step_real
                window_real += step_real
                tokens += step_tokens
                samples += step_samples
                window_tokens += step_tokens
                window_samples += step_samples
                window_loss += loss
                for key, value in metrics.items():
                    window_metrics[key] = window_metrics.get(key, 0) + value
                window_steps += 1
                if measured_since is None:  # the first step (allocation, compilation) is not timed
                    measured_since, measured_tokens, measured_samples = time.perf_counter(), tokens, samples
                    measured_real = real_tokens.clone()
                self.monitor.advance()
                last = self.step >= self.cfg.steps
                if self.cfg.log_every and (self.step % self.cfg.log_every == 0 or last):
                    now = time.perf_counter()
                    elapsed = max(now - window_start, 1e-9)
                    scalars = {"loss": window_loss.item() / window_steps, "lr": lr_at(self.step - 1, self.cfg),
                               "tokens_per_second": window_tokens / elapsed,
                               "real_tokens_per_second": window_real.item() / elapsed,
                               "samples_per_second": window_samples / elapsed}
                    scalars.update({k: v.item() / window_steps for k, v in window_metrics.items()})
                    self.monitor.log(self.step, scalars)
                    window_start, window_tokens, window_samples, window_steps = now, 0, 0, 0
                    window_real = torch.zeros((), dtype=torch.int64, device=self.device)
                    window_loss = torch.zeros((), device=self.device)
                    window_metrics = {}
                if self.cfg.eval_every and (self.step % self.cfg.eval_every == 0 or last):
                    last_eval = self.evaluate()
                    if last_eval:
                        self.monitor.log(self.step, last_eval)
                if self.cfg.save_every and self.step % self.cfg.save_every == 0 and not last:
                    last_saved = self.save()
            end = time.perf_counter()
            if self.step > start_step and last_saved != ckpt.checkpoint_root(self.out_dir) / f"step-{self.step}":
                last_saved = self.save()
        finally:
            for sig, old in previous_handlers.items():
                signal.signal(sig, old)
            self.monitor.close()
        release_free_memory()  # the plot and the export after training reuse no step buffers
        return self._summarise(start_step, clock, end, measured_since, tokens - (measured_tokens or 0),
                               samples - (measured_samples or 0), last_eval, last_saved,
                               real_tokens=int((real_tokens - measured_real).item()))

    def _summarise(self, start_step: int, clock: float, end: float, measured_since: float | None,
                   tokens: int, samples: int, last_eval: dict[str, float], saved: Path | None,
                   real_tokens: int = 0) -> dict[str, Any]:
        previous = self.out_dir / "summary.json"
        if self.step == start_step and previous.is_file():  # nothing was trained: keep the run's summary
            kept = ckpt.read_json(previous)
            return {**kept, "steps_this_run": 0, "interrupted": False, "stop_signal": None}
        timed = (end - measured_since) if measured_since is not None else 0.0
        tps = tokens / timed if timed > 0 else 0.0
        sps = samples / timed if timed > 0 else 0.0
        real_tps = real_tokens / timed if timed > 0 else 0.0
        mfu = None
        assert self.monitor is not None
        if tps and self.matmul_peak:
            mfu = flops_per_token(self.raw_model, self.seq_length) * tps / (self.matmul_peak * self.info.world_size)
        history = self.monitor.read_history() if self.info.is_main else []
        final_loss = next((r["loss"] for r in reversed(history) if "loss" in r), None)
        summary = {
            "steps": self.step,
            "steps_this_run": self.step - start_step,
            "tokens_per_second": round(tps, 1),
            "real_tokens_per_second": round(real_tps, 1),
            "samples_per_second": round(sps, 2),
            "mfu": float(f"{mfu:.4g}") if mfu is not None else None,  # significant digits: tiny models too
            "precision": self.cfg.precision,  # as run (train.precision=auto settled for this device)
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "allocator": active_allocator(),  # the malloc behind peak_rss_mb (MODALOOM_ALLOCATOR)
            "final_loss": final_loss,
            "wall_seconds": round(end - clock, 2),
            "world_size": self.info.world_size,
            "skipped_steps": self.skipped_steps,
            "interrupted": self.stop_signal is not None and self.step < self.cfg.steps,
            "stop_signal": int(self.stop_signal) if self.stop_signal is not None else None,
            "checkpoint": str(saved) if saved else None,
            **last_eval,
        }
        if self.info.is_main:
            plot = self.monitor.plot()
            summary["curves_png"] = str(plot) if plot else None
            summary["summary_json"] = str(self.out_dir / "summary.json")
            self.monitor.write_summary(summary)
        return summary
