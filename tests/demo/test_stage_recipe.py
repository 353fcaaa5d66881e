"""A stage folder records its recipe (``recipe.json``: sizes + a hash of the stage module's source); a later run
with another recipe neither reuses the finished stage nor resumes its steps, and says why."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from modaloom.demo.stage import RECIPE_NAME, REPORT_NAME, StageReport, clear_stage_folder, recorded_recipe
from tests.demo.test_demo_cli import FakeStages, demo


@dataclass(frozen=True)
class Sizes:
    steps: int
    width: int


def give_recipes(tmp_path, steps: int = 7) -> dict:
    """Sizes and a source file for the fake stage modules (``FakeStages`` makes them without either)."""
    modules = {}
    for name in ("alpha", "beta"):
        module = sys.modules[f"fake_demo_stage_{name}"]
        source = tmp_path / f"fake_{name}.py"
        if not source.exists():
            source.write_text(f"# the {name} stage\n", encoding="utf-8")
        module.__file__ = str(source)
        module.QUICK = Sizes(steps=steps, width=32)
        modules[name] = module
    return modules


def test_a_changed_recipe_reruns_the_finished_stage_from_a_clean_folder(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch)
    give_recipes(tmp_path)
    assert demo(tmp_path) == 0
    alpha = tmp_path / "work" / "alpha"
    recipe = recorded_recipe(alpha)
    assert recipe is not None and recipe["sizes"] == {"steps": 7, "width": 32} and recipe["quick"] is True
    (alpha / "run" / "stale_output.txt").write_text("made with 7 steps", encoding="utf-8")
    outside = tmp_path / "work" / "notes.txt"  # the user's, beside the stage folders
    outside.write_text("mine", encoding="utf-8")
    (alpha / "link").symlink_to(outside)  # a link inside the folder is removed, its target kept
    assert demo(tmp_path) == 0
    assert fakes.calls == {"alpha": 1, "beta": 1}  # same recipe: reused
    capsys.readouterr()

    give_recipes(tmp_path, steps=9)  # the quick sizes changed
    assert demo(tmp_path, "alpha") == 0
    assert fakes.calls == {"alpha": 2, "beta": 1}
    err = capsys.readouterr().err
    assert "the alpha stage's recipe changed since" in err and "(sizes steps 7 -> 9)" in err
    assert "earlier outputs there are deleted" in err and "reusing the finished alpha" not in err
    assert not (alpha / "run" / "stale_output.txt").exists() and not (alpha / "link").is_symlink()
    assert outside.read_text(encoding="utf-8") == "mine"
    assert json.loads((alpha / ".modaloom-demo").read_text()) == {"stage": "alpha", "quick": True}  # marker kept
    assert recorded_recipe(alpha)["sizes"]["steps"] == 9 and StageReport.load(alpha) is not None

    (tmp_path / "fake_alpha.py").write_text("# the alpha stage, another recipe\n", encoding="utf-8")
    assert demo(tmp_path, "alpha") == 0
    assert fakes.calls["alpha"] == 3
    assert "(the code of fake_demo_stage_alpha changed)" in capsys.readouterr().err


def test_an_unfinished_stage_resumes_only_under_its_own_recipe(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch, interrupt={"alpha"})
    give_recipes(tmp_path)
    assert demo(tmp_path, "alpha") != 0  # interrupted (Ctrl-C) before it finished
    alpha = tmp_path / "work" / "alpha"
    assert recorded_recipe(alpha)["sizes"]["steps"] == 7 and not (alpha / REPORT_NAME).exists()
    (alpha / "step_output.bin").write_bytes(b"half of a 7-step run")
    fakes.interrupt.clear()
    give_recipes(tmp_path, steps=8)
    assert demo(tmp_path, "alpha") == 0
    assert "(sizes steps 7 -> 8)" in capsys.readouterr().err
    assert not (alpha / "step_output.bin").exists() and fakes.calls["alpha"] == 2


def test_a_finished_folder_without_a_recorded_recipe_is_reused_as_made(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch)
    give_recipes(tmp_path)
    assert demo(tmp_path) == 0
    (tmp_path / "work" / "alpha" / RECIPE_NAME).unlink()  # a folder of a version that did not record it
    give_recipes(tmp_path, steps=9)
    assert demo(tmp_path, "alpha") == 0
    assert fakes.calls["alpha"] == 1 and "reusing the finished alpha stage" in capsys.readouterr().err


def test_clearing_keeps_the_named_entries(tmp_path):
    (tmp_path / "keep.json").write_text("{}", encoding="utf-8")
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "x").write_text("x", encoding="utf-8")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    clear_stage_folder(tmp_path, keep=("keep.json",))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]
