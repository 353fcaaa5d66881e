"""The demo's report: ``index.html`` (one self-contained file) and ``index.md`` from the stages' reports.

Pictures are embedded in the HTML as base64 ``data:`` URIs, so that the one file opens from the file system,
survives being copied or mailed alone, and fetches nothing; the markdown links to copies of them under
``figures/<stage>/`` beside it (markdown viewers do not all show ``data:`` images). Both files and every
figure folder are written atomically, so an interrupted demo leaves the previous complete report.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

from modaloom.allocator import configured_library
from modaloom.atomic import atomic_write_bytes, atomic_write_text, replace_directory
from modaloom.demo.stage import StageReport, Table
from modaloom.errors import DataError

RUN_COLUMNS = [  # (summary.json key, column title)
    ("name", "run"),
    ("steps", "steps"),
    ("wall_seconds", "wall s"),
    ("tokens_per_second", "tokens/s"),
    ("samples_per_second", "samples/s"),
    ("peak_rss_mb", "peak RSS MB"),
]
STATUS_KEY = "status"  # meta key: stage -> status text ("finished", "reused ...", "failed: ...")

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; background: #fff;
  max-width: 1100px; margin: 0 auto; padding: 0 24px 48px; }
h1 { margin: 24px 0 4px; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 40px; }
h3 { margin: 22px 0 8px; font-size: 16px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 10px; overflow-x: auto; font-size: 13px; }
figure { margin: 10px 0 18px; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 13px; }
.failed { color: #b42318; font-weight: 600; } .note { color: #57606a; }
details summary { cursor: pointer; margin: 4px 0; }
nav ol { margin: 4px 0; }
"""


def machine_facts() -> dict[str, Any]:
    """The header's machine facts, taken when the demo starts (the load average shows a busy machine)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        load = "unavailable"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "CPUs": os.cpu_count(),
        "torch": torch_version,
        "Python": platform.python_version(),
        "platform": platform.platform(),
        "load average at start": load,
        "malloc of its commands": configured_library() or "the system's",  # modaloom/allocator.py
    }


def format_cell(value: Any) -> str:
    """Numbers as a reader wants them: accuracies to 3 decimals, throughputs without noise, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``1 min 15 s``; short runs in seconds."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def anchor(stage: str) -> str:
    """The id of a stage's section, e.g. ``stage-vision-language`` (also used by the screenshot script)."""
    return "stage-" + "".join(c if c.isalnum() or c == "-" else "-" for c in stage)


def headline_text(report: StageReport) -> str:
    return ", ".join(f"{k} {format_cell(v)}" for k, v in report.headline.items()) or "-"


def runs_table(report: StageReport) -> Table:
    """One row per training run; a run without tokens (images, speech features) shows '-' for tokens/s."""
    rows = [[None if key == "tokens_per_second" and not run.get(key) else run.get(key) for key, _ in RUN_COLUMNS]
            for run in report.runs]
    return Table("Training runs", [title for _, title in RUN_COLUMNS], rows)


def samples_table(report: StageReport) -> Table:
    header: list[str] = []
    for sample in report.samples:
        header += [k for k in sample if k not in header]
    return Table("Sample predictions", header, [[s.get(k, "") for k in header] for s in report.samples])


def read_config(work: Path, relative: str) -> str:
    try:
        return (work / relative).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"# cannot read {work / relative}: {exc}"


class FigureCopy:
    """A stage figure as both outputs use it: the bytes (for the data URI) and the copy's relative path."""

    def __init__(self, caption: str, data: bytes | None, relative: str, source: Path) -> None:
        self.caption, self.data, self.relative, self.source = caption, data, relative, source


def copy_figures(out: Path, work: Path, report: StageReport) -> list[FigureCopy]:
    """Copies the stage's PNGs to ``out/figures/<stage>/`` (the folder replaced whole: no stale pictures)."""
    copies: list[FigureCopy] = []
    folder = out / "figures" / report.stage
    if not report.figures:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)  # the report's own copies from an earlier report of this stage
        return copies
    with replace_directory(folder, keep_existing=False) as tmp:
        for index, figure in enumerate(report.figures):
            source = work / figure.path
            name = f"{index:02d}-{source.name}"
            try:
                data = source.read_bytes()
            except OSError:
                copies.append(FigureCopy(figure.caption, None, "", source))
                continue
            (tmp / name).write_bytes(data)
            copies.append(FigureCopy(figure.caption, data, f"figures/{report.stage}/{name}", source))
    return copies


# ---------------------------------------------------------------- HTML


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_table(table: Table, heading: bool = True) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{e(format_cell(c))}</td>' if isinstance(c, int | float) and not isinstance(c, bool)
            else f"<td>{e(format_cell(c))}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    title = f"<h3>{e(table.title)}</h3>\n" if heading else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_section(work: Path, report: StageReport, status: str, figures: list[FigureCopy]) -> str:
    parts = [f'<section id="{anchor(report.stage)}">', f"<h2>{e(report.title)}</h2>"]
    status_class = ' class="failed"' if status.startswith(("failed", "interrupted")) else ' class="note"'
    parts.append(f"<p{status_class}>{e(status)}; wall time {e(format_seconds(report.wall_s))}; "
                 f"work folder {e(work)}</p>")
    parts.append(f"<p>{e(report.summary)}</p>")
    if report.headline:
        parts.append(html_table(Table("Headline figures", ["figure", "value"],
                                      [[k, v] for k, v in report.headline.items()])))
    parts += [html_table(t) for t in report.tables]
    if report.runs:
        parts.append(html_table(runs_table(report)))
    if figures:
        parts.append("<h3>Figures</h3>")
    for fig in figures:
        if fig.data is None:
            parts.append(f'<p class="failed">missing figure: {e(fig.source)}</p>')
            continue
        uri = "data:image/png;base64," + base64.b64encode(fig.data).decode("ascii")
        parts.append(f'<figure><img src="{uri}" alt="{e(fig.caption)}"><figcaption>{e(fig.caption)}'
                     f"</figcaption></figure>")
    if report.samples:
        parts.append(html_table(samples_table(report)))
    if report.commands:
        parts.append("<h3>Reproduce</h3>")
        parts.append(f"<pre>{e(chr(10).join(report.commands))}</pre>")
    if report.configs:
        parts.append("<h3>Configs</h3>")
    for name, relative in report.configs.items():
        parts.append(f"<details><summary>{e(name)} ({e(relative)})</summary>"
                     f"<pre>{e(read_config(work, relative))}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(reports: list[tuple[Path, StageReport]], figures: dict[str, list[FigureCopy]],
                total_wall_s: float, facts: dict[str, Any], status: dict[str, str]) -> str:
    """The whole page: header, machine facts, summary across stages, contents, one section per stage."""
    rows = [[k, str(v)] for k, v in facts.items()] + [["total wall time", format_seconds(total_wall_s)]]
    summary = Table("Summary", ["stage", "key figures", "wall time", "status"], [
        [r.title, headline_text(r), format_seconds(r.wall_s), status.get(r.stage, "finished")] for _, r in reports])
    pending = [[name, "-", "-", text] for name, text in status.items()
               if name not in {r.stage for _, r in reports}]
    summary.rows += pending
    contents = "".join(f'<li><a href="#{anchor(r.stage)}">{e(r.title)}</a></li>' for _, r in reports)
    sections = "\n".join(html_section(work, r, status.get(r.stage, "finished"), figures[r.stage])
                         for work, r in reports)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>modaloom demo report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        '<header id="top">\n<h1>modaloom demo report</h1>\n'
        f"{html_table(Table('Machine', ['fact', 'value'], rows), heading=False)}\n"
        f'</header>\n<section id="summary">\n<h2>Summary</h2>\n{html_table(summary, heading=False)}\n'
        f"<nav><h3>Contents</h3><ol>{contents}</ol></nav>\n</section>\n{sections}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- markdown


def m(value: Any) -> str:
    """Markdown text: HTML-escaped (so '<script>' shows as text), one line, table pipes escaped."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|")


def md_table(table: Table, heading: bool = True) -> str:
    lines = [f"### {m(table.title)}", ""] if heading else []
    lines.append("| " + " | ".join(m(h) for h in table.header) + " |")
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(m(format_cell(c)) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def fence(text: str, info: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run inside the text."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}\n"


def md_section(work: Path, report: StageReport, status: str, figures: list[FigureCopy]) -> str:
    parts = [f'<a id="{anchor(report.stage)}"></a>', "", f"## {m(report.title)}", "",
             f"*{m(status)}; wall time {m(format_seconds(report.wall_s))}; work folder `{work}`*", "",
             m(report.summary), ""]
    if report.headline:
        parts.append(md_table(Table("Headline figures", ["figure", "value"],
                                    [[k, v] for k, v in report.headline.items()])))
    parts += [md_table(t) for t in report.tables]
    if report.runs:
        parts.append(md_table(runs_table(report)))
    if figures:
        parts += ["### Figures", ""]
    for fig in figures:
        if fig.data is None:
            parts += [f"**missing figure:** `{fig.source}`", ""]
        else:
            alt = m(fig.caption).replace("[", "(").replace("]", ")")
            parts += [f"![{alt}]({fig.relative})", "", f"*{m(fig.caption)}*", ""]
    if report.samples:
        parts.append(md_table(samples_table(report)))
    if report.commands:
        parts += ["### Reproduce", "", fence("\n".join(report.commands), "sh")]
    if report.configs:
        parts += ["### Configs", ""]
    for name, relative in report.configs.items():
        parts += [f"<details><summary>{m(name)} ({m(relative)})</summary>", "",
                  fence(read_config(work, relative), "yaml"), "</details>", ""]
    return "\n".join(parts)


def render_markdown(reports: list[tuple[Path, StageReport]], figures: dict[str, list[FigureCopy]],
                    total_wall_s: float, facts: dict[str, Any], status: dict[str, str]) -> str:
    rows = [[k, str(v)] for k, v in facts.items()] + [["total wall time", format_seconds(total_wall_s)]]
    summary = Table("Summary", ["stage", "key figures", "wall time", "status"], [
        [r.title, headline_text(r), format_seconds(r.wall_s), status.get(r.stage, "finished")] for _, r in reports])
    summary.rows += [[name, "-", "-", text] for name, text in status.items()
                     if name not in {r.stage for _, r in reports}]
    contents = [f"{i}. [{m(r.title)}](#{anchor(r.stage)})" for i, (_, r) in enumerate(reports, 1)]
    head = ["# modaloom demo report", "", md_table(Table("Machine", ["fact", "value"], rows), heading=False),
            "## Summary", "", md_table(summary, heading=False), "### Contents", "", *contents, ""]
    sections = [md_section(work, r, status.get(r.stage, "finished"), figures[r.stage]) for work, r in reports]
    return "\n".join(head + sections)


REPORT_MARKER = ".modaloom-demo-report"  # in a --report folder: the demo wrote it, so it may rewrite it


def claim_report_folder(out: Path) -> None:
    """Makes ``out`` the demo's report folder, or refuses one that holds files an earlier demo report did not
    write: rewriting would replace its ``index.html``, ``index.md`` and ``figures/<stage>/``."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"--report {out}: not a folder (a link or a file); choose another --report")
    if out.is_dir() and not (out / REPORT_MARKER).is_file():
        present = sorted(p.name for p in out.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise DataError(f"--report {out} already holds files the demo did not write ({shown}); nothing was "
                            f"changed. Choose an empty or new --report folder (default: demo-report)")
    if not (out / REPORT_MARKER).is_file():  # write_report claims the folder again after every stage
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / REPORT_MARKER, "a modaloom demo report folder: `modaloom demo` rewrites it\n")


def write_report(out: Path, reports: list[tuple[Path, StageReport]], total_wall_s: float,
                 meta: dict[str, Any]) -> Path:
    """Writes ``out/index.html``, ``out/index.md`` and ``out/figures/``; returns the HTML's path.

    ``reports`` pairs each stage's work folder (figure and config paths are relative to it) with its report,
    in the order shown. ``meta`` holds the header's facts (see ``machine_facts``), shown in order, and under
    ``"status"`` an optional mapping stage -> status text ("finished", "reused ...", "failed: ...", "not
    run yet"); stages named there without a report are listed in the summary table only.
    """
    out = Path(out)
    claim_report_folder(out)
    facts = {k: v for k, v in meta.items() if k != STATUS_KEY}
    status = dict(meta.get(STATUS_KEY, {}))
    figures = {report.stage: copy_figures(out, work, report) for work, report in reports}
    atomic_write_text(out / "index.md", render_markdown(reports, figures, total_wall_s, facts, status))
    page = out / "index.html"
    atomic_write_bytes(page, render_html(reports, figures, total_wall_s, facts, status).encode("utf-8"))
    return page
