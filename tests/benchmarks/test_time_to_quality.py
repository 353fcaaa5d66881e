"""``benchmarks/time_to_quality.py``: reading TencentPretrain's log and modaloom's metrics (the runs themselves
are long and optional)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import time_to_quality  # noqa: E402
from side_by_side import Measured  # noqa: E402

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


def test_the_recipe_and_the_fixed_budget_reach_the_pretrain_command():
    args = time_to_quality.pretrain_args(100, "bf16", 10, 256)
    assert args[:4] == ["--steps", "100", "--precision", "bf16"]
    assert all(part in args for part in time_to_quality.RECIPE)
    assert {"train.eval_every=10", "train.eval_holdout=256", "train.eval_batches=0"} <= set(args)
    assert time_to_quality.PIPELINE_STEPS >= 2 * 40  # about twice the steps the recipe needs (docs/benchmarks.md)


def test_bf16_only_where_the_cpu_has_it(monkeypatch):
    import torch

    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert time_to_quality.resolve_precision("auto", "cpu") == expected


def test_the_load_of_several_commands_is_weighted_by_their_wall_time():
    short, long = Measured(wall=1.0, peak_rss_mb=0, load=10.0), Measured(wall=3.0, peak_rss_mb=0, load=2.0)
    assert time_to_quality.mean_load(short, long) == 4.0


def ours(reached: bool) -> dict:
    return {"preprocess": 5.0, "pretrain": 12.0, "finetune": 130.0, "steps": 100, "precision": "bf16",
            "reached": {"step": 40, "value": 7.05, "seconds": 14.5} if reached else None, "quality_load": 0.5,
            "pipeline_seconds": 147.0, "test_accuracy": 0.81, "pipeline_load": 0.6, "pretrain_peak_rss_mb": 450.0,
            "allocator": "jemalloc"}


def test_without_a_checkout_the_reference_figures_are_printed_and_no_ratio_claimed(capsys):
    result = time_to_quality.report(None, ours(True), 7.13, ["quality", "pipeline"], 2)
    out = capsys.readouterr().out
    assert "reference figures" in out and "no ratio claimed" in out and "x TencentPretrain" not in out
    assert "preprocess 4.4 + 1000 steps 170.0" in out
    assert "at step 40, 14.5 s" in out and "test accuracy 0.8100" in out and "test accuracy 0.7795" in out
    assert result["tencentpretrain"]["pipeline_seconds"] == 4.40 + 170.0 + 418.0
    assert not result["tencentpretrain_measured"] and "quality_ratio" not in result and "pipeline_ratio" not in result


def test_with_a_measured_tencentpretrain_both_ratios_are_printed(capsys):
    theirs = {"steps": 1000, "preprocess": 4.0, "pretrain": 141.0, "mlm_loss": 7.2, "quality_seconds": 145.0,
              "quality_load": 0.4, "finetune": 444.0, "test_accuracy": 0.78, "pipeline_seconds": 589.0,
              "pipeline_load": 0.5, "pretrain_peak_rss_mb": 900.0}
    result = time_to_quality.report(theirs, ours(True), 7.2, ["quality", "pipeline"], 2)
    out = capsys.readouterr().out
    assert "TencentPretrain 900 MiB, modaloom 450 MiB (100 steps, malloc: jemalloc); 2.00x less" in out
    assert result["quality_ratio"] == 145.0 / 14.5 and result["pipeline_ratio"] == 589.0 / 147.0
    assert "10.00x TencentPretrain (target >= 8x)" in out and "4.01x TencentPretrain (target >= 3x" in out
    quality_only = {k: v for k, v in theirs.items() if not k.startswith(("pipeline", "finetune", "test"))}
    time_to_quality.report(quality_only, ours(False), 7.2, ["quality"], 2)  # (1) alone: no fine-tune figures
    out = capsys.readouterr().out
    assert "did not reach 7.200 in 100 steps" in out and "(2)" not in out


def test_quick_runs_modaloom_end_to_end_on_tiny_slices(tmp_path, capsys):
    """The smoke run: preprocess, a few recipe steps with held-out evaluations, a one-epoch fine-tune."""
    out = tmp_path / "result.json"
    assert time_to_quality.main(["--quick", "--threads", "1", "--work", str(tmp_path / "w"), "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    ml = result["modaloom"]
    assert ml["steps"] == time_to_quality.QUICK_STEPS and ml["precision"] in ("bf16", "fp32")
    assert ml["preprocess"] > 0 and ml["pretrain"] > 0 and ml["finetune"] > 0 and 0 <= ml["test_accuracy"] <= 1
    metrics = (tmp_path / "w" / "ml_run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert sum("eval/mlm_loss" in json.loads(line) for line in metrics) >= 2  # evaluated along the way
    assert "QUICK: smoke only" in capsys.readouterr().out
