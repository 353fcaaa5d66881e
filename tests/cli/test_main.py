"""The CLI dispatcher: help for every verb, usage errors as one line with exit code 2."""

import subprocess
import sys
import types

import pytest

from modaloom.cli import main as cli
from modaloom.errors import ConfigError


def test_every_available_verb_has_help(capsys):
    verbs = cli.available_verbs()
    assert verbs, "no CLI verbs importable"
    for verb in verbs:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([verb, "--help"])
        assert exit_info.value.code == 0
        assert verb in capsys.readouterr().out


def test_no_verb_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: modaloom" in capsys.readouterr().out


def _fake_verb(monkeypatch):
    def run(args):
        raise ConfigError("model.encoder.heads_num: bad value 0")

    module = types.SimpleNamespace(HELP="fails", configure=lambda p: None, run=run)
    monkeypatch.setattr(cli, "available_verbs", lambda: {"fake": module})


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    _fake_verb(monkeypatch)
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "modaloom fake: error: model.encoder.heads_num: bad value 0"
    assert "Traceback" not in err


def test_debug_shows_traceback(monkeypatch):
    _fake_verb(monkeypatch)
    with pytest.raises(ConfigError):
        cli.main(["fake", "--debug"])


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "modaloom.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout


def test_finetune_help_lists_every_registered_fine_tuning_task():
    import modaloom.tasks  # noqa: F401  (registers the built-in tasks)
    from modaloom import registry
    from modaloom.cli.finetune import TASKS

    built_in = {name for name in registry.names("task")  # other tests register tasks of their own
                if registry.get("task", name).__module__.startswith("modaloom.")}
    assert set(TASKS) == built_in - {"pretrain", "zero_shot"}  # zero_shot only evaluates
