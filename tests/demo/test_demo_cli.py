"""`modaloom demo`: stages chosen by name, finished stages reused, failures reported, --fresh-stage guarded."""

from __future__ import annotations

import json
import sys
import types

import pytest

import modaloom.demo as demo_stages
from modaloom.cli.main import main
from modaloom.demo.stage import StageReport, timed
from tests.demo.fakes import fake_report


class FakeStages:
    """Two fake stage modules registered as the demo's STAGES; ``calls`` counts how often each ran."""

    def __init__(self, monkeypatch, fail: set[str] = frozenset(), interrupt: set[str] = frozenset()):
        self.calls = {"alpha": 0, "beta": 0}
        self.fail, self.interrupt = set(fail), set(interrupt)
        stages = {}
        for name in self.calls:
            module = types.ModuleType(f"fake_demo_stage_{name}")
            module.run = timed(self.runner(name))
            monkeypatch.setitem(sys.modules, module.__name__, module)
            stages[name] = module.__name__
        monkeypatch.setattr(demo_stages, "STAGES", stages)

    def runner(self, name):
        def run(ctx) -> StageReport:
            self.calls[name] += 1
            ctx.commands.append(f"modaloom fake-step {name}")
            if name in self.interrupt:
                raise KeyboardInterrupt
            if name in self.fail:
                raise RuntimeError(f"{name} broke on purpose")
            report = fake_report(ctx.work, name, 0.75 if ctx.quick else 0.9)
            report.commands = list(ctx.commands)
            return report
        return run


def demo(tmp_path, *extra):
    return main(["demo", "--work", str(tmp_path / "work"), "--report", str(tmp_path / "report"), "--quick",
                 *extra])


def page(tmp_path) -> str:
    return (tmp_path / "report" / "index.html").read_text(encoding="utf-8")


def test_a_run_writes_the_report_and_a_second_run_reuses_finished_stages(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch)
    assert demo(tmp_path) == 0
    assert fakes.calls == {"alpha": 1, "beta": 1}
    first = page(tmp_path)
    assert 'id="stage-alpha"' in first and 'id="stage-beta"' in first and "modaloom fake-step beta" in first
    assert "--quick" in first and (tmp_path / "report" / "index.md").is_file()
    for name in ("alpha", "beta"):
        assert StageReport.load(tmp_path / "work" / name) is not None
        assert json.loads((tmp_path / "work" / name / ".modaloom-demo").read_text()) == {"stage": name,
                                                                                        "quick": True}
    assert demo(tmp_path) == 0
    assert fakes.calls == {"alpha": 1, "beta": 1}
    assert "reusing the finished alpha stage" in capsys.readouterr().err
    assert "reused (finished earlier)" in page(tmp_path)


def test_one_stage_by_name_keeps_the_other_finished_stage_in_the_report(tmp_path, monkeypatch):
    fakes = FakeStages(monkeypatch)
    assert demo(tmp_path, "alpha") == 0
    assert fakes.calls == {"alpha": 1, "beta": 0}
    assert demo(tmp_path, "beta") == 0
    assert fakes.calls == {"alpha": 1, "beta": 1}
    text = page(tmp_path)
    assert 'id="stage-alpha"' in text and "from an earlier run (not chosen now)" in text


def test_a_failing_stage_is_reported_the_others_run_and_the_exit_is_non_zero(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch, fail={"alpha"})
    assert demo(tmp_path) == 1
    assert fakes.calls == {"alpha": 1, "beta": 1}
    err = capsys.readouterr().err
    assert "stage alpha failed: alpha broke on purpose" in err and "1 stage(s) failed: alpha" in err
    text = page(tmp_path)
    assert "failed: alpha broke on purpose" in text and 'id="stage-beta"' in text and "Stage beta" in text
    assert "modaloom fake-step alpha" in text  # the commands it had run before failing
    assert StageReport.load(tmp_path / "work" / "alpha") is None
    fakes.fail.clear()
    assert demo(tmp_path) == 0  # the failed stage runs again, the finished one is reused
    assert fakes.calls == {"alpha": 2, "beta": 1}


def test_an_interrupted_stage_leaves_a_partial_report(tmp_path, monkeypatch):
    fakes = FakeStages(monkeypatch, interrupt={"beta"})
    assert demo(tmp_path) == 130
    assert fakes.calls == {"alpha": 1, "beta": 1}
    text = page(tmp_path)
    assert 'id="stage-alpha"' in text and "interrupted" in text and 'id="stage-beta"' not in text


def test_a_stage_module_that_does_not_exist_is_a_failed_stage(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch)
    monkeypatch.setitem(demo_stages.STAGES, "alpha", "modaloom_no_such_stage_module")
    assert demo(tmp_path) == 1
    assert fakes.calls == {"alpha": 0, "beta": 1}
    err = capsys.readouterr().err
    assert "the alpha stage's module modaloom_no_such_stage_module is not in this installation" in err
    assert "Traceback" not in err
    assert not (tmp_path / "report" / "figures" / "alpha").exists()


def test_unknown_stage_names_the_valid_ones(tmp_path, monkeypatch, capsys):
    FakeStages(monkeypatch)
    assert demo(tmp_path, "alpah") == 2
    err = capsys.readouterr().err
    assert "unknown demo stage 'alpah'" in err and "did you mean 'alpha'" in err and "alpha, beta" in err
    assert not (tmp_path / "work").exists()
    assert demo(tmp_path, "--fresh-stage", "gamma") == 2
    assert "unknown demo stage 'gamma'" in capsys.readouterr().err


def test_fresh_stage_redoes_a_demo_folder_and_refuses_any_other(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch)
    assert demo(tmp_path) == 0
    assert demo(tmp_path, "--fresh-stage", "beta") == 0
    assert fakes.calls == {"alpha": 1, "beta": 2}
    mine = tmp_path / "work" / "alpha"
    for item in mine.iterdir():
        if item.is_file():
            item.unlink()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    assert demo(tmp_path, "--fresh-stage", "alpha") == 2
    assert "did not make it; nothing was deleted" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert demo(tmp_path, "alpha", "--fresh-stage", "beta") == 2
    assert "not among the stages to run" in capsys.readouterr().err


def test_a_report_folder_of_the_users_is_refused_before_any_stage_runs(tmp_path, monkeypatch, capsys):
    fakes = FakeStages(monkeypatch)
    mine = tmp_path / "report"
    (mine / "figures" / "alpha").mkdir(parents=True)
    (mine / "index.html").write_text("my page", encoding="utf-8")
    (mine / "figures" / "alpha" / "plot.png").write_bytes(b"mine")
    assert demo(tmp_path) == 2
    assert "already holds files the demo did not write (figures, index.html); nothing was changed" in \
        capsys.readouterr().err
    assert fakes.calls == {"alpha": 0, "beta": 0}
    assert (mine / "index.html").read_text(encoding="utf-8") == "my page"
    assert (mine / "figures" / "alpha" / "plot.png").read_bytes() == b"mine"
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert main(["demo", "--work", str(tmp_path / "work"), "--report", str(tmp_path / "file"), "--quick"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_quick_stage_is_not_reused_by_a_full_run(tmp_path, monkeypatch, capsys):
    FakeStages(monkeypatch)
    assert demo(tmp_path) == 0
    full = ["demo", "--work", str(tmp_path / "work"), "--report", str(tmp_path / "report")]
    assert main(full) == 2
    assert "holds a --quick-size run of the alpha stage" in capsys.readouterr().err


@pytest.mark.parametrize("stages", [[], ["speech", "text"]])
def test_the_real_stage_names_are_accepted_in_stages_order(stages):
    from modaloom.cli.demo import chosen_stages

    assert chosen_stages(stages) == [s for s in ["text", "vision", "vision-language", "speech"]
                                     if not stages or s in stages]


def test_a_stage_folder_of_the_users_is_never_used(tmp_path, monkeypatch, capsys):
    """A stage writes into its folder and empties it when its recipe changes: a non-empty folder the demo did
    not make (no marker, no stage report) is refused before any stage runs, and left as it was."""
    fakes = FakeStages(monkeypatch)
    mine = tmp_path / "work" / "alpha"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    assert demo(tmp_path) == 2
    assert "holds files the demo did not write" in capsys.readouterr().err
    assert fakes.calls == {"alpha": 0, "beta": 0}
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "mine"
