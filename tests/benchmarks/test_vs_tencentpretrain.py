"""The side-by-side harness: its set-up message without a checkout, its measuring of process trees and its
interleaving (CI), and a tiny real run against TencentPretrain when ``MODALOOM_TP`` names a checkout."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import side_by_side  # noqa: E402
import vs_tencentpretrain  # noqa: E402


def test_without_a_checkout_it_says_how_to_make_one_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MODALOOM_TP", raising=False)
    assert vs_tencentpretrain.main(["--quick", "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "no TencentPretrain checkout given" in err
    assert "checkout ed79843" in err and "torch==2.13.0" in err
    assert not (tmp_path / "w").exists()  # nothing run, nothing written


def test_a_folder_that_is_not_tencentpretrain_is_named(tmp_path, capsys):
    (tmp_path / "preprocess.py").write_text("", encoding="utf-8")
    assert vs_tencentpretrain.main(["--tp", str(tmp_path), "--quick"]) == 2
    assert f"{tmp_path} is not a TencentPretrain checkout: pretrain.py is missing" in capsys.readouterr().err


def test_missing_interpreter_is_named(tmp_path):
    for name in ("preprocess.py", "pretrain.py", "finetune/run_classifier.py", "tencentpretrain/x"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    assert side_by_side.tp_problem(tmp_path, sys.executable) is None
    assert "does not exist" in side_by_side.tp_problem(tmp_path, str(tmp_path / "nopython"))


def test_peak_rss_counts_the_whole_process_tree(tmp_path):
    """A child that holds 120 MB while its parent holds little: the tree's peak has both."""
    child = "import time; b = bytearray(120 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.6)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True); print('done')"
    measured = side_by_side.run_measured([sys.executable, "-c", parent], threads=1)
    assert measured.peak_rss_mb > 120
    assert measured.wall > 0.5 and measured.load >= 0 and measured.output.strip() == "done"


def test_a_failing_command_fails_loudly_with_its_output():
    with pytest.raises(SystemExit, match="boom"):
        side_by_side.run_measured([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], threads=1)


def test_runs_alternate_which_tool_goes_first():
    order: list[str] = []

    def run(name: str):
        def go() -> side_by_side.Measured:
            order.append(name)
            return side_by_side.Measured(wall=float(len(order)), peak_rss_mb=1.0, load=0.0)
        return go

    results = side_by_side.interleaved({"a": run("a"), "b": run("b")}, repeat=3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert side_by_side.median(results["a"]).wall == 4.0  # walls 1, 4, 5


def test_the_corpus_slice_ends_at_a_document_boundary(tmp_path):
    path = vs_tencentpretrain.corpus_slice(tmp_path, 50)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert 0 < len(lines) <= 50 and lines[-1] == ""


@pytest.mark.skipif(not os.environ.get("MODALOOM_TP"), reason="set MODALOOM_TP (and MODALOOM_TP_PYTHON) to a "
                    "TencentPretrain checkout at ed79843 to run the tiny real side-by-side")
def test_tiny_real_side_by_side(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert vs_tencentpretrain.main(["--quick", "--parts", "preprocess", "pretrain", "--work", str(tmp_path / "w"),
                                    "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    parts = [r["part"].split(",")[0] for r in rows]
    assert parts[:8] == ["preprocess"] * 3 + ["pretrain"] * 5
    # with jemalloc (or another malloc modaloom preloads) installed, TencentPretrain runs once more with it
    assert len(parts) - 8 in (0, 2) and all(p.startswith("TencentPretrain itself with") for p in parts[8:])
    assert all(r["tencentpretrain"] > 0 and r["modaloom"] > 0 and r["ratio"] > 0 for r in rows)
    assert "| part | TencentPretrain | modaloom |" in capsys.readouterr().out
