"""`modaloom demo [STAGE ...]`: every modality end to end on real data, with a report (see docs/demo.md).

Runs the stages of ``modaloom.demo.STAGES`` (text, vision, vision-language, speech) in that order, each in
its own folder under ``--work``, and writes ``--report``/index.html and index.md after every stage, so an
interrupted run still leaves a correct partial report. A finished stage (its ``stage.json``) is reused while its
recipe is unchanged (``demo/stage.py``: ``reusable_report``); a
failed stage is reported as failed, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import modaloom.demo as demo_stages
from modaloom.atomic import atomic_write_json
from modaloom.demo.install import offer_allocator
from modaloom.demo.report import claim_report_folder, machine_facts, write_report
from modaloom.demo.stage import REPORT_NAME, StageContext, StageReport, reusable_report
from modaloom.errors import ConfigError, DataError, ModaloomError, nearest

HELP = "run the text, vision, vision-language and speech stages on real data and write a report"
MARKER = ".modaloom-demo"  # written into every stage folder the demo creates: {"stage": .., "quick": ..}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stages", nargs="*", metavar="STAGE",
                        help=f"stages to run, in any order (default: all: {', '.join(demo_stages.STAGES)})")
    parser.add_argument("--work", default="demo_run", metavar="DIR", help="folder for every stage's data, models and runs "
                        "(default: demo_run); a second run reuses what is finished there")
    parser.add_argument("--report", default="demo-report", metavar="DIR",
                        help="folder for index.html, index.md and figures/ (default: demo-report)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (seconds per stage): checks the path, not the figures; for tests")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads for every step (default: torch's own choice)")
    parser.add_argument("--fresh-stage", action="append", default=[], metavar="NAME",
                        help="redo this finished stage: deletes its folder inside --work first (repeatable)")


def chosen_stages(names: list[str]) -> list[str]:
    """The stages to run in STAGES order; an unknown name is an error listing the valid ones."""
    valid = list(demo_stages.STAGES)
    for name in names:
        if name not in valid:
            raise ConfigError(f"unknown demo stage {name!r}{nearest(name, valid)}; valid stages: "
                              f"{', '.join(valid)}")
    return [name for name in valid if not names or name in names]


def read_marker(folder: Path) -> dict | None:
    """The marker the demo wrote into a stage folder, or None when there is none (not the demo's folder)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def demo_made(folder: Path) -> bool:
    """Whether the demo made this stage folder: its marker, or a finished stage's report (older versions)."""
    return read_marker(folder) is not None or (folder / REPORT_NAME).is_file()


def remove_stage_folder(folder: Path, name: str) -> None:
    """Deletes a stage folder for --fresh-stage, only when the demo made it (its marker or stage.json)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise DataError(f"--fresh-stage {name}: {folder} is not a folder the demo made (a link or a file); "
                        f"remove it yourself or choose another --work")
    if not folder.exists():
        return
    if not demo_made(folder):
        raise DataError(f"--fresh-stage {name}: {folder} has neither {MARKER} nor {REPORT_NAME}, so the demo "
                        f"did not make it; nothing was deleted. Remove it yourself or choose another --work")
    print(f"--fresh-stage {name}: deleting {folder}", file=sys.stderr, flush=True)
    shutil.rmtree(folder)


def prepare_folder(folder: Path, name: str, quick: bool) -> None:
    """Creates a stage folder with the demo's marker; a folder made at the other size is an error, and so is a
    non-empty folder the demo did not make: a stage writes into its folder and empties it when its recipe
    changes (``demo/stage.py``), so a folder of the user's is never used."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise DataError(f"{folder} is a link or a file, not a stage folder the demo made; choose another --work")
    if folder.is_dir() and any(folder.iterdir()) and not demo_made(folder):
        raise DataError(f"{folder} holds files the demo did not write (no {MARKER} or {REPORT_NAME}); nothing "
                        f"was changed: move them away or choose another --work")
    marker = read_marker(folder)
    if marker is not None and bool(marker.get("quick")) != quick:
        made, now = ("--quick", "full") if marker.get("quick") else ("full", "--quick")
        raise ConfigError(f"{folder} holds a {made}-size run of the {name} stage and this is a {now} run; "
                          f"add --fresh-stage {name} to redo it, or choose another --work")
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / MARKER, {"stage": name, "quick": quick})


def run_stage(name: str, folder: Path, args: argparse.Namespace) -> tuple[StageReport, str]:
    """Reuses the finished stage or runs it; returns its report and status (a failure is reported, not raised)."""
    ctx = StageContext(work=folder, quick=args.quick, threads=args.threads)
    start = time.perf_counter()
    try:
        module = importlib.import_module(demo_stages.STAGES[name])
        report = reusable_report(name, folder, module, args.quick, keep=(MARKER,))
        if report is not None:
            print(f"reusing the finished {name} stage in {folder} (--fresh-stage {name} redoes it)",
                  file=sys.stderr, flush=True)
            return report, "reused (finished earlier)"
        report = module.run(ctx)
        report.save(folder)
        return report, "finished"
    except Exception as exc:  # one stage's failure must not stop the others
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == demo_stages.STAGES[name]
        if missing:
            exc = ModaloomError(f"the {name} stage's module {exc.name} is not in this installation")
        if not isinstance(exc, ModaloomError) or getattr(args, "debug", False):
            traceback.print_exc()
        print(f"modaloom demo: stage {name} failed: {exc}", file=sys.stderr, flush=True)
        failed = StageReport(stage=name, title=f"{name} (failed)", summary=f"This stage failed: {exc}",
                             headline={}, commands=list(ctx.commands),
                             wall_s=round(time.perf_counter() - start, 1))
        return failed, f"failed: {exc}"


def command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it again (the report's header)."""
    parts = ["modaloom demo", *args.stages, "--work", args.work, "--report", args.report]
    parts += ["--quick"] if args.quick else []
    parts += ["--threads", str(args.threads)] if args.threads else []
    for name in args.fresh_stage:
        parts += ["--fresh-stage", name]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    names = chosen_stages(args.stages)
    for name in args.fresh_stage:
        chosen_stages([name])
        if name not in names:
            raise ConfigError(f"--fresh-stage {name}: {name} is not among the stages to run ({', '.join(names)})")
    work, out = Path(args.work).resolve(), Path(args.report).resolve()
    claim_report_folder(out)  # before any stage runs: a folder of the user's is refused at once
    for name in args.fresh_stage:
        remove_stage_folder(work / name, name)
    for name in names:
        prepare_folder(work / name, name, args.quick)
    if not args.quick:  # the stages' commands then run with it (modaloom/allocator.py)
        offer_allocator()
    meta = {**machine_facts(), "command": command_line(args),
            "sizes": "quick (tiny, for tests)" if args.quick else "full", "work folder": str(work)}
    status = {name: "not run yet" for name in names}
    done: dict[str, tuple[Path, StageReport]] = {}
    for name in demo_stages.STAGES:  # finished stages not chosen now still belong in the report
        folder = work / name
        earlier = StageReport.load(folder) if name not in names else None
        marker = read_marker(folder)
        if earlier is not None and marker is not None and bool(marker.get("quick")) == args.quick:
            done[name], status[name] = (folder, earlier), "from an earlier run (not chosen now)"

    def report() -> Path:
        ordered = [done[n] for n in demo_stages.STAGES if n in done]
        return write_report(out, ordered, time.perf_counter() - start, {**meta, "status": status})

    for index, name in enumerate(names, 1):
        print(f"\n==== demo stage {index}/{len(names)}: {name}", file=sys.stderr, flush=True)
        try:
            stage_report, status[name] = run_stage(name, work / name, args)
        except KeyboardInterrupt:
            status[name] = "interrupted"
            report()
            raise
        done[name] = (work / name, stage_report)
        report()
    page = report()
    failed = [name for name in names if status[name].startswith("failed")]
    print(f"\ndemo report: {page}\n             {out / 'index.md'}\n"
          f"total wall time {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if failed:
        print(f"modaloom demo: {len(failed)} stage(s) failed: {', '.join(failed)} (see above and the report)",
              file=sys.stderr)
        return 1
    return 0
