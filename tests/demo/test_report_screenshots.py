"""``benchmarks/report_screenshots.py``: sections cut by style, blank space trimmed, and (with Chromium) real PNGs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from modaloom.demo.report import write_report
from tests.demo.fakes import fake_report

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "report_screenshots.py"


@pytest.fixture(scope="module")
def shots():
    spec = importlib.util.spec_from_file_location("report_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(tmp_path) -> Path:
    reports = [(tmp_path / "work" / n, fake_report(tmp_path / "work" / n, n)) for n in ("text", "speech")]
    return write_report(tmp_path / "report", reports, 30.0, {"CPUs": 2}).parent


def test_each_section_is_shown_alone(shots, tmp_path):
    page = (report(tmp_path) / "index.html").read_text(encoding="utf-8")
    assert shots.section_ids(page) == ["summary", "stage-text", "stage-speech"]
    solo = shots.only_section(page, "stage-speech")
    assert "body > section:not(#stage-speech) { display: none !important; }" in solo
    assert "body > header { display: none" in solo
    assert "body > header" not in shots.only_section(page, "summary")


def test_content_bottom_finds_the_last_drawn_row(shots):
    image = Image.new("RGB", (50, 400), "white")
    ImageDraw.Draw(image).rectangle((10, 20, 30, 120), fill="black")
    assert shots.content_bottom(image) == 121
    assert shots.content_bottom(Image.new("RGB", (5, 5), "white")) == 0


def test_missing_report_or_browser_is_a_clear_exit(shots, tmp_path):
    with pytest.raises(SystemExit, match="index.html does not exist"):
        shots.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="apt-get install chromium-headless-shell"):
        shots.find_browser("modaloom-no-such-browser")


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium-headless-shell", "chromium")),
                    reason="no headless Chromium here (apt-get install chromium-headless-shell)")
def test_real_chromium_shoots_the_page_and_every_section(shots, tmp_path, capsys):
    folder = report(tmp_path)
    assert shots.main([str(folder), "--width", "900"]) == 0
    printed = capsys.readouterr().out.split("\n")
    names = ["full", "summary", "stage-text", "stage-speech"]
    assert [Path(line.split()[0]).stem for line in printed if line] == names
    sizes = {}
    for name in names:
        with Image.open(folder / "screenshots" / f"{name}.png") as image:
            sizes[name] = image.size
            assert image.width == 900 and shots.content_bottom(image) < image.height  # blank bottom cut
    assert sizes["full"][1] > sizes["stage-text"][1] + sizes["summary"][1]  # the page holds both and more
