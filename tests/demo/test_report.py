"""The demo report: both files, their tables, escaping, pictures and nothing fetched from the network."""

from __future__ import annotations

import base64
import re

from modaloom.demo import report as report_module
from modaloom.demo.report import anchor, format_cell, format_seconds, machine_facts, write_report
from modaloom.demo.stage import Figure
from tests.demo.fakes import fake_report, tiny_png


def make(tmp_path):
    reports = [(tmp_path / "work" / name, fake_report(tmp_path / "work" / name, name, acc))
               for name, acc in (("text", 0.8125), ("vision-language", 0.9031))]
    meta = {**machine_facts(), "status": {"text": "finished", "vision-language": "reused (finished earlier)",
                                          "speech": "not run yet"}}
    page = write_report(tmp_path / "out", reports, 93.4, meta)
    return page, (tmp_path / "out" / "index.md").read_text(encoding="utf-8"), reports


def test_html_holds_every_section_table_and_the_embedded_picture(tmp_path):
    page, _, reports = make(tmp_path)
    text = page.read_text(encoding="utf-8")
    assert page == tmp_path / "out" / "index.html"
    for stage in ("text", "vision-language"):
        assert f'<section id="{anchor(stage)}">' in text
        assert f'href="#{anchor(stage)}"' in text
    assert "<th>peak RSS MB</th>" in text and "<td class=\"num\">512.3</td>" in text
    assert "12,346" in text  # tokens/s
    assert "<h3>Accuracy by init</h3>" in text and "0.903" in text and "0.812" in text
    assert "1 min 33 s" in text  # total wall time
    assert "speech" in text and "not run yet" in text  # a pending stage is in the summary table
    assert "<details><summary>fine-tune (config.yaml)</summary>" in text and "hidden: 32  # text" in text
    assert "modaloom pretrain --config" in text
    png = (reports[0][0] / "run" / "curves.png").read_bytes()
    assert "data:image/png;base64," + base64.b64encode(png).decode("ascii") in text
    assert "<td>CPUs</td>" in text


def test_html_escapes_text_and_fetches_nothing(tmp_path):
    page, _, _ = make(tmp_path)
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)  # every link is a data URI or an anchor


def test_markdown_has_the_tables_escaped_text_and_copied_pictures(tmp_path):
    _, md, reports = make(tmp_path)
    out = tmp_path / "out"
    assert "| run | steps | wall s | tokens/s | samples/s | peak RSS MB |" in md
    assert "| pretrain | 7 | 3.250 | 12,346 | 42.0 | 512.3 |" in md
    assert "| a \\| pipe | pos | &lt;script&gt;alert('x')&lt;/script&gt; |" in md
    assert "<script" not in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["figures/text/00-curves.png", "figures/vision-language/00-curves.png"]
    for link in links:
        assert (out / link).read_bytes() == (reports[0][0] / "run" / "curves.png").read_bytes()
    assert "[Stage vision-language](#stage-vision-language)" in md
    assert '<a id="stage-vision-language"></a>' in md
    assert "```yaml\nmodel:\n  hidden: 32  # text" in md


def test_missing_figure_is_reported_and_stale_copies_are_removed(tmp_path):
    work = tmp_path / "work" / "text"
    report = fake_report(work, "text")
    report.figures.append(Figure("gone.png", "never written"))
    write_report(tmp_path / "out", [(work, report)], 1.0, {})
    assert (tmp_path / "out" / "figures" / "text" / "00-curves.png").is_file()
    html_text = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "missing figure:" in html_text and "gone.png" in html_text
    tiny_png(work / "grid.png", (0, 0, 200))
    report.figures = [Figure("grid.png", "a grid")]
    write_report(tmp_path / "out", [(work, report)], 1.0, {})
    assert sorted(p.name for p in (tmp_path / "out" / "figures" / "text").iterdir()) == ["00-grid.png"]
    hidden = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert hidden == [report_module.REPORT_MARKER]  # no temp files left


def test_cells_and_durations_read_well():
    assert [format_cell(v) for v in (None, 0.81234, 42.04, 12345.6, 7, 123456, True, "x")] == [
        "-", "0.812", "42.0", "12,346", "7", "123,456", "True", "x"]
    assert format_seconds(9.94) == "9.9 s" and format_seconds(754) == "12 min 34 s"
    assert anchor("vision-language") == "stage-vision-language"
    facts = machine_facts()
    assert facts["CPUs"] and "load average at start" in facts and facts["torch"]


def test_a_run_without_tokens_shows_a_dash_not_zero_tokens_per_second():
    from modaloom.demo.report import runs_table
    from modaloom.demo.stage import StageReport

    report = StageReport(stage="vision", title="t", summary="s", headline={}, runs=[
        {"name": "mae", "steps": 4, "wall_seconds": 1.0, "tokens_per_second": 0.0, "samples_per_second": 9.0,
         "peak_rss_mb": 100.0},
        {"name": "bert", "steps": 4, "wall_seconds": 1.0, "tokens_per_second": 512.0, "samples_per_second": 8.0,
         "peak_rss_mb": 100.0}])
    rows = runs_table(report).rows
    assert rows[0][3] is None and rows[1][3] == 512.0
