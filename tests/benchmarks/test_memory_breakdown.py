"""The memory breakdown names every cause, in the order a run meets them, on a tiny dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import memory_breakdown  # noqa: E402

from tests.train.data_helpers import write_dataset  # noqa: E402


def test_breakdown_rows_name_each_cause_and_keep_the_comparison_out_of_the_run_peak(tmp_path, capsys):
    data = write_dataset(tmp_path / "bert", documents=12, seq_length=16)
    vocab = json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert memory_breakdown.main([str(data), "--batch", "4", "--seq", "16", "--threads", "1", "--json",
                                  "--override", f"model.embedding.vocab_size={vocab}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    parts = [row["part"] for row in result["rows"]]
    for cause in ("import torch", "import modaloom", "model (tiny BERT)", "data loader", "logging", "matmul-peak probe",
                  "optimizer", "training steps", "loss-curve plot", "full masked LM logits"):
        assert sum(cause in part for part in parts) == 1, cause
    rows = result["rows"]
    assert all(row["peak_mb"] >= row["rss_mb"] > 0 for row in rows)
    assert result["peak_mb"] == max(row["peak_mb"] for row in rows if not row.get("comparison"))
    assert rows[-1]["comparison"] and rows[-1]["run_peak_mb"] == result["peak_mb"]
    memory_breakdown.print_rows(result)
    printed = capsys.readouterr().out
    assert "matmul-peak probe (MFU)" in printed and f"peak RSS of the run's parts: {result['peak_mb']:.0f}" in printed
