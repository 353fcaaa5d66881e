"""Screenshots of a demo report in a real browser: the whole page and each section, as PNGs.

    python benchmarks/report_screenshots.py demo-report [--out DIR] [--width 1200] [--browser PATH]

Uses headless Chromium from Debian (``apt-get install chromium-headless-shell``, or ``chromium``). The report
is one self-contained file (pictures embedded), so each section is shot from a copy of ``index.html`` in a
temporary folder whose added style hides every other section (the summary keeps the header): no scripting,
no scrolling to an anchor, nothing fetched. Chromium shoots a fixed window, so the window is tall and the
blank space under the content is cut off; a page taller than the window is shot again in a taller one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

BROWSERS = ("chromium-headless-shell", "chromium", "/usr/lib/chromium/chromium-headless-shell",
            "/usr/lib/chromium/chromium")
HEIGHTS = (3000, 8000, 16000)  # tried in turn until the content ends above the window's bottom
MARGIN = 24  # pixels of background kept under the content


def find_browser(given: str | None) -> str:
    """The Chromium binary to use, or a SystemExit naming the Debian packages that provide one."""
    for candidate in ([given] if given else BROWSERS):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    sys.exit(f"no headless Chromium found ({given or ', '.join(BROWSERS)}); install one with "
             f"`sudo apt-get install chromium-headless-shell` (or `chromium`), or pass --browser PATH")


def section_ids(page: str) -> list[str]:
    """The report's sections in page order: ``summary`` then ``stage-<name>`` (see demo/report.py)."""
    return re.findall(r'<section id="([^"]+)"', page)


def only_section(page: str, section: str) -> str:
    """The page with a style that hides every other section (and the header, except for the summary)."""
    hide = f"body > section:not(#{section}) {{ display: none !important; }}"
    if section != "summary":
        hide += " body > header { display: none !important; }"
    return page.replace("</style>", f"{hide}\n</style>", 1)


def content_bottom(image: Image.Image) -> int:
    """The last row that differs from the page's background (the bottom-left pixel), plus one."""
    rgb = image.convert("RGB")
    background = Image.new("RGB", rgb.size, rgb.getpixel((0, rgb.height - 1)))
    box = ImageChops.difference(rgb, background).getbbox()
    return box[3] if box else 0


def shoot(browser: str, html: Path, png: Path, width: int, profile: Path) -> Path:
    """Renders ``html`` in windows of growing height until it fits, then cuts the blank bottom off."""
    for height in HEIGHTS:
        argv = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                html.resolve().as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not png.is_file():
            sys.exit(f"{browser} failed on {html} (exit {done.returncode}):\n{done.stderr[-2000:]}")
        with Image.open(png) as image:
            bottom = content_bottom(image)
            if bottom < height - MARGIN or height == HEIGHTS[-1]:
                image.crop((0, 0, width, min(height, bottom + MARGIN))).save(png)
                return png
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report folder (holds index.html)")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: REPORT/screenshots)")
    parser.add_argument("--width", type=int, default=1200, help="window width in pixels (default 1200)")
    parser.add_argument("--browser", help="the Chromium binary (default: the first of " + ", ".join(BROWSERS) + ")")
    args = parser.parse_args(argv)
    index = args.report / "index.html"
    if not index.is_file():
        sys.exit(f"{index} does not exist: write the report first (modaloom demo --report {args.report})")
    browser = find_browser(args.browser)
    out = args.out or args.report / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    page = index.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="report-shots-") as tmp:
        profile = Path(tmp) / "profile"
        shots = [shoot(browser, index, out / "full.png", args.width, profile)]
        for section in section_ids(page):
            copy = Path(tmp) / f"{section}.html"
            copy.write_text(only_section(page, section), encoding="utf-8")
            shots.append(shoot(browser, copy, out / f"{section}.png", args.width, profile))
    for shot in shots:
        with Image.open(shot) as image:
            print(f"{shot}  {image.width}x{image.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
