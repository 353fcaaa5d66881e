"""What every demo stage returns and how it runs its steps: the contract between stages and the report.

A stage (``modaloom/demo/<name>.py``) exposes ``run(ctx: StageContext) -> StageReport``. It runs modaloom
commands through ``ctx.command`` (each in its own process, so that its peak memory is its own), keeps every
file under ``ctx.work``, and returns tables, figures and headline numbers. The report is saved as
``stage.json`` only when the stage finished, so a second ``make demo`` reuses finished stages and resumes
unfinished ones from what their steps left (each step skips work whose output is complete).

Steps check files, not what made them, so each stage folder also records its recipe (``recipe.json``:
``stage_recipe``, the sizes and a hash of the stage module's source, where its configs are written and its
commands built). A later run whose recipe differs neither reuses the finished stage nor resumes its steps: the
folder's contents are deleted (nothing outside it) and the stage runs again, with a message saying what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from modaloom.atomic import atomic_write_json
from modaloom.errors import DataError

REPORT_NAME = "stage.json"
RECIPE_NAME = "recipe.json"


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


def stage_recipe(module: ModuleType, quick: bool) -> dict[str, Any]:
    """What defines a stage's recipe, known before it runs: the sizes it runs at (its module's ``QUICK`` or
    ``FULL``) and a hash of its module's source, which writes its YAML configs and builds its commands from
    them. Any edit of the module counts as a new recipe: generic, and never a stale result."""
    sizes = getattr(module, "QUICK" if quick else "FULL", None)
    source = Path(module.__file__).read_bytes() if getattr(module, "__file__", None) else b""
    recipe = {"quick": quick, "sizes": asdict(sizes) if is_dataclass(sizes) and not isinstance(sizes, type) else {},
              "source": hashlib.sha256(source).hexdigest(), "module": module.__name__}
    text = json.dumps(recipe, sort_keys=True, default=str)
    return {**json.loads(text), "fingerprint": hashlib.sha256(text.encode()).hexdigest()}


def recorded_recipe(work: Path) -> dict[str, Any] | None:
    """The recipe recorded in a stage folder, or None (none yet, or made by a version that did not record it)."""
    try:
        recipe = json.loads((work / RECIPE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recipe if isinstance(recipe, dict) and "fingerprint" in recipe else None


def record_recipe(work: Path, recipe: dict[str, Any]) -> None:
    """Writes the recipe the stage folder's outputs are made with."""
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / RECIPE_NAME, recipe)


def recipe_change(work: Path, recipe: dict[str, Any]) -> str:
    """What differs between the recipe recorded in ``work`` and ``recipe``: changed sizes (``steps 20 -> 30``) or
    the module's code; "" when they agree or nothing is recorded."""
    before = recorded_recipe(work)
    if before is None or before["fingerprint"] == recipe["fingerprint"]:
        return ""
    old, new = before.get("sizes") or {}, recipe["sizes"]
    sizes = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if sizes:
        return "sizes " + ", ".join(sizes)
    if before.get("source") != recipe["source"]:
        return f"the code of {recipe['module']} changed"
    return "its recipe changed"


def clear_stage_folder(work: Path, keep: Iterable[str] = ()) -> None:
    """Deletes the contents of a stage's own folder except the names in ``keep``; links are removed, never
    followed, so nothing outside the folder is touched."""
    kept = set(keep)
    for item in work.iterdir():
        if item.name in kept:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def reusable_report(name: str, work: Path, module: ModuleType, quick: bool, keep: Iterable[str] = (),
                    log: Any = None) -> StageReport | None:
    """The finished stage's report when its recipe is the current one (or none was recorded: a folder of an
    earlier version, kept as made); a folder made with another recipe is emptied (``keep``: the demo's marker)
    and the current recipe recorded, so the stage runs again from the start."""
    recipe = stage_recipe(module, quick)
    change = recipe_change(work, recipe)
    if change:
        print(f"the {name} stage's recipe changed since {work} was made ({change}): running it again from the "
              f"start (its earlier outputs there are deleted)", file=log or sys.stderr, flush=True)
        clear_stage_folder(work, keep)
    report = StageReport.load(work)
    if report is None:
        record_recipe(work, recipe)  # the steps run (or resume) under this recipe
    return report

