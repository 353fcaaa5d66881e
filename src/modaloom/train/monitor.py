"""What a run shows and leaves behind (rank 0 only): progress bar, TensorBoard, JSONL, plots, summary.

Files under the output directory:
- ``metrics.jsonl``: one JSON object per logged step (``step``, ``lr``, ``loss``, target metrics,
  ``tokens_per_second`` counting padding, ``real_tokens_per_second`` counting only attention-mask positions,
  ``samples_per_second``) and per evaluation (keys prefixed ``eval/``);
- ``tensorboard/``: the same scalars as TensorBoard event files;
- ``curves.png``: loss and learning rate against the step, drawn at the end;
- ``summary.json``: ``steps``, ``tokens_per_second``, ``real_tokens_per_second``, ``samples_per_second``,
  ``mfu``, ``peak_rss_mb``,
  final loss and eval metrics, wall time.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from modaloom.atomic import atomic_file, atomic_write_json, atomic_write_text


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def drop_rows_after(path: Path, step: int) -> None:
    """Remove the rows of steps after ``step`` (logged by a run killed after its last checkpoint, about to be
    redone by the resumed run), so that every step appears once; a half-written last line goes too."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class Monitor:
    """Collects logged scalars and writes them out; a silent no-op on ranks other than 0."""

    def __init__(self, out_dir: str | Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.total_steps = total_steps
        self.history: list[dict[str, Any]] = []
        self.bar: tqdm | None = None
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        drop_rows_after(self.out_dir / "metrics.jsonl", start_step)
        self.jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_step or None)
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Record scalars at ``step`` in every sink; the bar shows loss, throughput and lr."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **scalars}
        self.history.append(record)
        assert self.jsonl is not None
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
        if self.bar is not None:
            shown = {}
            for key, label in (("loss", "loss"), ("eval/loss", "eval"), ("tokens_per_second", "tok/s"),
                               ("real_tokens_per_second", "real tok/s"), ("lr", "lr")):
                if key in scalars:
                    value = scalars[key]
                    shown[label] = f"{value:.3g}" if key == "lr" else f"{value:.4g}"
            if shown:
                self.bar.set_postfix(shown, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def plot(self) -> Path | None:
        """Loss (train and eval) and learning rate against the step, as ``curves.png``."""
        if not self.enabled:
            return None
        history = self.read_history()
        train = [r for r in history if "loss" in r]
        evals = [r for r in history if "eval/loss" in r]
        if not train and not evals:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        if train:
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        if evals:
            ax_loss.plot([r["step"] for r in evals], [r["eval/loss"] for r in evals], "o-", label="eval loss")
        ax_loss.set_ylabel("loss")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        lr = [r for r in history if "lr" in r]
        ax_lr.plot([r["step"] for r in lr], [r["lr"] for r in lr], color="tab:orange")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        ax_lr.grid(alpha=0.3)
        fig.tight_layout()
        path = self.out_dir / "curves.png"
        try:
            with atomic_file(path) as tmp:  # the temp name keeps .png, which savefig reads the format from
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)
        return path

    def read_history(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl`` (also those of earlier, resumed parts of the run)."""
        path = self.out_dir / "metrics.jsonl"
        records: dict[tuple[int, bool], dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                is_eval = any(k.startswith("eval/") for k in record)
                records[(record["step"], is_eval)] = record  # a resumed run overwrites repeated steps
        return [records[k] for k in sorted(records)]

    def write_summary(self, summary: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        path = self.out_dir / "summary.json"
        atomic_write_json(path, summary, indent=1, sort_keys=True)
        return path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
