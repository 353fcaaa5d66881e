"""``benchmarks/time_to_quality.py``: reading TencentPretrain's log and modaloom's metrics (the runs themselves
are long and optional)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import time_to_quality  # noqa: E402

TP_LINES = ("|      900/    1000 steps|  24000.10 tokens/s| loss    7.90| loss_mlm: 7.251| loss_sp: 0.650| "
            "acc_mlm: 0.038| acc_sp: 0.680\n"
            "|     1000/    1000 steps|  24100.55 tokens/s| loss    7.75| loss_mlm: 7.130| loss_sp: 0.620| "
            "acc_mlm: 0.040| acc_sp: 0.687\n")


def test_the_mlm_loss_of_a_step_is_read_from_tencentpretrains_log():
    assert time_to_quality.tp_mlm_loss_at(TP_LINES, 1000) == 7.13
    assert time_to_quality.tp_mlm_loss_at(TP_LINES, 900) == 7.251
    assert time_to_quality.tp_mlm_loss_at(TP_LINES, 500) is None


def test_time_to_quality_is_the_first_evaluation_at_or_below_the_target(tmp_path):
    rows = [{"step": 10, "time": 105.0, "loss": 7.0},  # a training loss below the target does not count
            {"step": 50, "time": 110.0, "eval/mlm_loss": 7.5},
            {"step": 100, "time": 120.0, "eval/mlm_loss": 7.13},
            {"step": 150, "time": 130.0, "eval/mlm_loss": 6.9}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert time_to_quality.first_time_at_or_below(path, "eval/mlm_loss", 7.13, 100.0) == {
        "step": 100, "value": 7.13, "seconds": 20.0}
    assert time_to_quality.first_time_at_or_below(path, "eval/mlm_loss", 6.0, 100.0) is None


def test_a_bad_checkout_is_refused_with_the_setup(tmp_path, capsys):
    assert time_to_quality.main(["--tp", str(tmp_path), "--work", str(tmp_path / "w")]) == 2
    assert "not a TencentPretrain checkout" in capsys.readouterr().err
