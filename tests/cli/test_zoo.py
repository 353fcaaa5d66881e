"""`modaloom zoo`: every zoo config with its parameter count and paper; --family filters; --json for scripts."""

from __future__ import annotations

import json

import pytest

from modaloom.cli import main as cli
from modaloom.zoo import zoo_names


def test_zoo_json_lists_every_config_with_count_and_paper(capsys):
    assert cli.main(["zoo", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == zoo_names()
    by_name = {e["name"]: e for e in entries}
    assert abs(by_name["bert/base"]["parameters"] - 110.1e6) / 110.1e6 < 0.01  # docs/zoo.md's count
    assert by_name["llama/7b"]["parameters"] > 6.7e9
    assert by_name["clip/vit-b32"]["paper"].startswith("Radford et al. 2021")
    assert all(e["paper"] and e["path"].endswith(e["name"] + ".yaml") for e in entries)


def test_zoo_table_for_one_family(capsys):
    assert cli.main(["zoo", "--family", "bert"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["config", "parameters", "paper"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.startswith("bert/")}
    assert sorted(rows) == zoo_names("bert")
    assert rows["bert/base"] == "110.1M" and rows["bert/tiny"] == "4.4M"
    assert not any(line.startswith(("gpt2/", "roberta/")) for line in lines)
    assert "Devlin et al. 2019" in next(line for line in lines if line.startswith("bert/base"))
    assert "--config bert/" in lines[-1]


def test_zoo_billions_are_written_as_such(capsys):
    assert cli.main(["zoo", "--family", "llama"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:] if "/" in line}
    assert rows["llama/7b"] == "6.74B" and rows["llama/tiny"] == "0.2M"


def test_unknown_family_is_one_line_with_the_nearest(capsys):
    assert cli.main(["zoo", "--family", "bret"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modaloom zoo: error: --family 'bret' is not a zoo family (did you mean 'bert'?)")
    assert "\n" not in err and "gpt2" in err


def test_pretrain_accepts_a_zoo_name(tmp_path, monkeypatch, capsys):
    """`--config` of other verbs goes through modaloom.config: a name loads (the run stops later, at the
    missing data), a typo fails with the nearest zoo names."""
    if "pretrain" not in cli.available_verbs():
        pytest.skip("pretrain verb not available")
    monkeypatch.chdir(tmp_path)
    args = ["--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "o")]
    assert cli.main(["pretrain", "--config", "bert/tiny", *args]) == 2
    err = capsys.readouterr().err
    assert "no-data is not a complete dataset" in err and "zoo config" not in err
    assert cli.main(["pretrain", "--config", "bert/tnyi", *args]) == 2
    assert "did you mean 'bert/tiny'?" in capsys.readouterr().err
