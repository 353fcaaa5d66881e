"""``benchmarks/objectives_table.py``: rows differ only in their objective or encoder, the table keeps a failed
row's reason, and two rows (infonce, siglip) run end to end in quick mode on tiny synthetic images."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest

from modaloom.demo import vision_language as vl
from tests.demo.test_demo_vision_language import synthetic_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import objectives_table as ot  # noqa: E402


def test_rows_change_only_the_objective_or_the_encoder():
    base = ot.row_config(ot.ROWS[0], vl.QUICK)
    assert base == vl.clip_config(vl.QUICK)  # infonce is the demo's model as it is
    by_name = {row.name: ot.row_config(row, vl.QUICK) for row in ot.ROWS}
    for name, config in by_name.items():
        assert config["model"]["embedding"] == base["model"]["embedding"], name
    for name in ("siglip", "filip"):
        expected = copy.deepcopy(base)
        expected["model"]["targets"][0]["loss"] = name
        assert by_name[name] == expected
    moco = by_name["moco"]["model"]["targets"][0]
    assert moco["type"] == "moco" and moco["queue_size"] == 4 * vl.QUICK.batch
    assert {**moco, "type": "clr", "momentum": None, "queue_size": None} == {
        **base["model"]["targets"][0], "momentum": None, "queue_size": None}
    dual, joint = by_name["vlmo-dual"]["model"], by_name["vlmo-itm-hard"]["model"]
    assert dual["encoder"]["type"] == joint["encoder"]["type"] == "modality_experts"
    assert dual["encoder"]["hidden_size"] == vl.QUICK.width and dual["encoder"]["layers_num"] == vl.QUICK.layers
    assert dual["targets"] == base["model"]["targets"]
    assert joint["targets"] == [*base["model"]["targets"], {"type": "itm", "negatives": "hard"}]
    assert by_name["vlmo-itm-hard"]["data"] == {"processor": "vilt"}
    assert [r.path for r in ot.ROWS if not (r.long or r.extra)].count("pretrain") == 2
    # the extra rows: the same ITM model (a longer budget is the only change), not run unless named
    assert by_name["vlmo-itm-hard-long"] == by_name["vlmo-fusion-long"] == by_name["vlmo-itm-hard"]
    assert [r.name for r in ot.ROWS if r.long] == ["vlmo-itm-hard-long", "vlmo-fusion-long"]
    random = by_name["vlmo-itm-random"]["model"]  # ViLT's random mismatches instead of mined negatives
    assert random["targets"] == [*base["model"]["targets"], {"type": "itm", "negatives": "data"}]
    assert by_name["vlmo-fusion-random"] == by_name["vlmo-itm-random"]
    assert {r.mismatch for r in ot.ROWS if r.name.endswith("-random")} == {0.5}
    fusion = next(r for r in ot.ROWS if r.name == "vlmo-fusion")  # the vlmo-itm-hard model, scored by itm
    assert by_name["vlmo-fusion"] == by_name["vlmo-itm-hard"] and fusion.model_of == "vlmo-itm-hard"
    assert fusion.scorer == ("task.scorer=itm", f"task.rerank={ot.RERANK}")
    with pytest.raises(ValueError, match="unknown row"):
        ot.row_config(ot.Row("nce", "", "finetune"), vl.QUICK)


def test_the_table_keeps_a_failed_rows_reason_and_lists_commands():
    results = [{"row": "infonce", "objective": "clr", "path": "finetune", "zero_shot_accuracy": 0.5,
                "t2i_r@1": 0.25, "i2t_r@1": 0.125, "train_run_s": 3.0, "commands": ["modaloom finetune x"]},
               {"row": "vlmo-itm-hard", "objective": "itm", "path": "pretrain",
                "failed": "demo step 'x: recall@K' failed (exit 2): modaloom evaluate --model m",
                "commands": ["modaloom evaluate --model m"]}]
    table = ot.markdown(results, vl.QUICK, {"zero_shot": 0.1, "r@1": 0.025, "r@1_class_ceiling": 0.25})
    assert "| infonce | clr | finetune | 0.500 | 0.250 | 0.125 | 3.000 |" in table
    assert "| vlmo-itm-hard | itm | pretrain | demo step 'x: recall@K' failed (exit 2) | | | |" in table
    assert "  - `modaloom evaluate --model m`" in table
    assert "| best possible knowing only the class | | | 1.000 | 0.250 | 0.250 | |" in table


def test_itm_progress_reads_the_end_and_the_step_that_left_the_prior(tmp_path):
    prior = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))  # one positive for two mined negatives
    logs = [{"step": 10, "itm_loss": prior, "itm_accuracy": 0.667, "itm_count": 12, "itm_hard_negatives": 8},
            {"step": 20, "itm_loss": 0.5, "itm_accuracy": 0.7, "itm_count": 12, "itm_hard_negatives": 8},
            {"step": 30, "itm_loss": prior, "itm_accuracy": 0.667, "itm_count": 12, "itm_hard_negatives": 8},
            {"step": 40, "loss": 1.0},  # a line without itm: skipped
            {"step": 50, "itm_loss": 0.4, "itm_accuracy": 0.8, "itm_count": 12, "itm_hard_negatives": 8},
            {"step": 60, "itm_loss": 0.3, "itm_accuracy": 0.875, "itm_count": 12, "itm_hard_negatives": 8}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in logs) + "\n")
    out = ot.itm_progress(path)
    assert out == {"itm_loss": 0.3, "itm_accuracy": 0.875, "itm_prior_loss": round(prior, 4),
                   "itm_left_prior_step": 50, "itm_step": 60}  # step 20 dipped, then went back to the prior
    path.write_text("\n".join(json.dumps(x) for x in logs[:1]) + "\n")
    assert ot.itm_progress(path)["itm_left_prior_step"] is None
    half = [{"step": 10, "itm_loss": 0.6, "itm_accuracy": 0.6, "itm_count": 8}]  # random mismatches, none mined
    path.write_text(json.dumps(half[0]) + "\n")
    assert ot.itm_progress(path, mismatch=0.5)["itm_prior_loss"] == round(math.log(2), 4)
    assert ot.itm_progress(path, mismatch=0.5)["itm_left_prior_step"] == 10  # 0.6 < 0.9 ln 2
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(KeyError, match="no logged step has itm_loss"):
        ot.itm_progress(path)


def test_the_table_with_attributes_shows_both_ceilings_and_the_itm_rows():
    results = [{"row": "vlmo-itm-hard-long", "objective": "itm", "path": "pretrain", "long": True, "steps": 48,
                "zero_shot_accuracy": 0.5, "t2i_r@1": 0.25, "i2t_r@1": 0.125, "train_run_s": 3.0, "itm_loss": 0.3,
                "itm_accuracy": 0.875, "itm_prior_loss": 0.6366, "itm_left_prior_step": None, "itm_step": 48,
                "commands": []}]
    table = ot.markdown(results, vl.QUICK, {"zero_shot": 0.1, "r@1": 0.025, "r@1_class_ceiling": 0.25,
                                            "r@1_attribute_ceiling": 0.7})
    assert "| best possible knowing the class and attributes | | | 1.000 | 0.700 | 0.700 | |" in table
    assert "the extra `-long` rows: 48 steps." in table
    assert "| vlmo-itm-hard-long | 48 | 0.300 | 0.875 | 0.637 | never |" in table


def test_unknown_rows_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ot.main(["--size", "quick", "--work", str(tmp_path), "--rows", "infonce,clip"])
    assert "unknown rows ['clip']" in capsys.readouterr().err


@pytest.mark.timeout(240)
def test_two_rows_quick_on_synthetic_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vl, "fashion_mnist_splits", synthetic_splits)
    out = tmp_path / "table.json"
    assert ot.main(["--size", "quick", "--work", str(tmp_path / "w"), "--rows", "infonce,siglip", "--threads", "1",
                    "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [r["row"] for r in saved["rows"]] == ["infonce", "siglip"] and saved["size"] == "quick"
    for row in saved["rows"]:
        assert "failed" not in row, row
        assert row["steps"] == vl.QUICK.steps
        assert all(0.0 <= row[k] <= 1.0 for k in ("zero_shot_accuracy", "t2i_r@1", "i2t_r@1"))
        assert [c.split()[1:3] for c in row["commands"]] == [["finetune", "--task"], ["evaluate", "--task"],
                                                             ["evaluate", "--task"]]
        assert f"task.templates={tmp_path / 'w' / 'templates.txt'}" in row["commands"][1]
        # finetune's own defaults (10% warm-up, length-grouped batches) are set explicitly, as pretrain gets them
        assert "train.warmup_ratio=0.1 train.group_by_length=false" in row["commands"][0]
    assert saved["setup_commands"][0].startswith("modaloom build-vocab")
    assert (tmp_path / "w" / "configs" / "siglip.yaml").is_file()
    table = capsys.readouterr().out
    assert table.startswith("| row | objective |") and "| siglip |" in table
