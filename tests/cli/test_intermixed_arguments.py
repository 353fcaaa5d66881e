"""Overrides may come before, between and after options: ``pretrain a=1 --steps 5 b=2``."""

from __future__ import annotations

import pytest

from modaloom.cli.main import build_parser, parse_command_line


def test_positionals_after_options_join_the_verbs_list_in_order():
    args = parse_command_line(build_parser(), ["pretrain", "--config", "bert/tiny", "train.lr=1", "--steps", "5",
                                               "train.seed=3", "--out", "x", "train.lr=2"])
    assert args.overrides == ["train.lr=1", "train.seed=3", "train.lr=2"] and args.steps == 5
    args = parse_command_line(build_parser(), ["evaluate", "--task", "zero_shot", "task.k=1", "--model", "m", "--input", "i",
                                               "task.rerank=4"])
    assert args.options == ["task.k=1", "task.rerank=4"]


def test_unknown_options_and_stray_words_still_fail(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_command_line(build_parser(), ["pretrain", "--config", "bert/tiny", "a=1", "--stepz", "5"])
    assert exc.value.code == 2 and "unrecognized arguments: --stepz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_command_line(build_parser(), ["inspect", "--help-me"])
