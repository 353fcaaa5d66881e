"""What every demo stage returns and how it runs its steps: the contract between stages and the report.

A stage (``modaloom/demo/<name>.py``) exposes ``run(ctx: StageContext) -> StageReport``. It runs modaloom
commands through ``ctx.command`` (each in its own process, so that its peak memory is its own), keeps every
file under ``ctx.work``, and returns tables, figures and headline numbers. The report is saved as
``stage.json`` only when the stage finished, so a second ``make demo`` reuses finished stages and resumes
unfinished ones from what their steps left (each step skips work whose output is complete).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modaloom.atomic import atomic_write_json
from modaloom.errors import DataError

REPORT_NAME = "stage.json"


@dataclass
class Table:
    """A metrics table: ``rows`` are lists of cells (numbers are formatted by the report)."""

    title: str
    header: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    """A PNG written by the stage (loss curves, masked inputs and reconstructions, retrieval grids)."""

    path: str  # relative to the stage's work folder
    caption: str


@dataclass
class StageReport:
    """One stage's results, as the report shows them and as ``stage.json`` stores them."""

    stage: str  # "text", "vision", "vision-language", "speech"
    title: str
    summary: str  # a short paragraph: what was trained on which data, and what the numbers mean
    headline: dict[str, float]  # the figures a reader looks for first, e.g. {"accuracy_pretrained": 0.81}
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)  # name -> config path relative to the stage folder
    commands: list[str] = field(default_factory=list)  # the modaloom commands, as a user would type them
    runs: list[dict[str, Any]] = field(default_factory=list)  # per training run: name, steps, wall_s, tokens/s,
    # samples/s and peak RSS, taken from its summary.json (see ``run_summary``)
    samples: list[dict[str, str]] = field(default_factory=list)  # a few shown predictions: input, expected, got
    wall_s: float = 0.0

    def save(self, work: Path) -> None:
        """Writes ``stage.json`` atomically: its presence means the stage finished."""
        atomic_write_json(work / REPORT_NAME, asdict(self))

    @classmethod
    def load(cls, work: Path) -> StageReport | None:
        """The finished stage's report, or None when the stage has not finished (or its report is unreadable)."""
        path = work / REPORT_NAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            raw["tables"] = [Table(**t) for t in raw.get("tables", [])]
            raw["figures"] = [Figure(**f) for f in raw.get("figures", [])]
            return cls(**raw)
        except (ValueError, TypeError):
            return None


@dataclass
class StageContext:
    """Where a stage works and how big it runs: ``quick`` shrinks every size for tests (seconds, not minutes)."""

    work: Path  # the stage's own folder, e.g. demo_run/text
    quick: bool = False
    threads: int | None = None  # torch threads for the steps (None: torch's default)
    log: Any = sys.stderr
    commands: list[str] = field(default_factory=list)

    def command(self, title: str, argv: list[str]) -> None:
        """Runs ``modaloom ARGV`` in a child process, printing the title and the command; stops on failure."""
        shown = "modaloom " + " ".join(argv)
        self.commands.append(shown)
        print(f"\n== {title}\n$ {shown}", file=self.log, flush=True)
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        done = subprocess.run([sys.executable, "-m", "modaloom", *argv], env=env)
        if done.returncode != 0:
            raise DataError(f"demo step '{title}' failed (exit {done.returncode}): {shown}")


def command_json(ctx: StageContext, title: str, argv: list[str], out: Path) -> dict[str, Any]:
    """Runs a command that prints its result as one JSON line on stdout (``modaloom evaluate``), as ``> out``
    in a shell, and keeps that JSON in ``out``; an existing ``out`` is reused without running the command."""
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    partial = out.with_name(out.name + ".part")
    sys.stdout.flush()
    saved = os.dup(1)  # the child inherits fd 1: point it at the file for the command's lifetime
    try:
        with open(partial, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            try:
                ctx.command(title, argv)
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)
    ctx.commands[-1] += f" > {out.name}"
    # the JSON is the last line (anything printed to stdout before it, e.g. progress, is above it)
    lines = [line for line in partial.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        value = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise DataError(f"demo step '{title}' printed no JSON line (its output: {partial})") from None
    atomic_write_json(out, value)
    partial.unlink()
    return value


def run_summary(name: str, run_dir: Path) -> dict[str, Any]:
    """The figures the report shows for one training run, from the run's ``summary.json``."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    keys = ("steps", "wall_seconds", "tokens_per_second", "samples_per_second", "peak_rss_mb")
    return {"name": name, **{k: summary.get(k) for k in keys}}


def timed(fn: Any) -> Any:
    """Wraps a stage's ``run`` so that its report carries its wall time."""

    def wrapper(ctx: StageContext) -> StageReport:
        start = time.perf_counter()
        report = fn(ctx)
        report.wall_s = round(time.perf_counter() - start, 1)
        return report

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper
