"""Fake stage reports with real files (a tiny PNG, a YAML config) for the report and CLI tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from modaloom.demo.stage import Figure, StageReport, Table

HOSTILE = "<script>alert('x')</script>"


def tiny_png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), color).save(path)
    return path


def fake_report(work: Path, stage: str, accuracy: float = 0.8125) -> StageReport:
    """A finished stage's report whose figure and config exist under ``work``."""
    tiny_png(work / "run" / "curves.png")
    (work / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(f"model:\n  hidden: 32  # {stage}\ntrain:\n  steps: 7\n", encoding="utf-8")
    return StageReport(
        stage=stage,
        title=f"Stage {stage}",
        summary=f"The {stage} stage, with {HOSTILE} in its text.",
        headline={"accuracy_pretrained": accuracy, "accuracy_random_init": 0.5},
        tables=[Table("Accuracy by init", ["init", "accuracy"], [["pretrained", accuracy], ["random", 0.5]])],
        figures=[Figure("run/curves.png", f"loss curves of {stage}")],
        configs={"fine-tune": "config.yaml"},
        commands=[f"modaloom pretrain --config {work}/config.yaml --out {work}/run"],
        runs=[{"name": "pretrain", "steps": 7, "wall_seconds": 3.25, "tokens_per_second": 12345.6,
               "samples_per_second": 42.0, "peak_rss_mb": 512.3}],
        samples=[{"input": "a | pipe", "expected": "pos", "got": HOSTILE}],
        wall_s=12.5,
    )
