"""Zoo configs by name: an existing path wins, a name loads the packaged file, a typo names the nearest ones;
the package data declaration ships every zoo file in a wheel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modaloom.config import config_dict, load_config, load_model_config
from modaloom.errors import ConfigError
from modaloom.zoo import ZOO_DIR, resolve_config, zoo_families, zoo_names, zoo_path

ROOT = Path(__file__).resolve().parents[2]


def test_names_are_family_slash_size_of_every_file():
    files = [p for p in ZOO_DIR.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert sorted(p.relative_to(ZOO_DIR).with_suffix("").as_posix() for p in files) == zoo_names()
    assert "bert/base" in zoo_names() and zoo_names("bert") == [n for n in zoo_names() if n.startswith("bert/")]
    assert "bert" in zoo_families() and "__pycache__" not in zoo_families()


@pytest.mark.parametrize("value", ["bert/tiny", "bert/tiny.yaml", "configs/bert/tiny.yaml", Path("bert/tiny")])
def test_name_loads_the_packaged_file(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkout around: the value is not a path here
    assert resolve_config(value) == ZOO_DIR / "bert" / "tiny.yaml"
    cfg = load_config(value)
    assert cfg.model.encoder.hidden_size == 128 and "Turc" in cfg.model.paper
    assert load_model_config(value).encoder.layers_num == 2


def test_existing_path_wins_over_a_zoo_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert").mkdir()
    local = tmp_path / "bert" / "tiny.yaml"
    local.write_text("model:\n  encoder:\n    hidden_size: 64\n    heads_num: 4\n", encoding="utf-8")
    assert resolve_config("bert/tiny.yaml") == Path("bert/tiny.yaml")
    assert load_config("bert/tiny.yaml").model.encoder.hidden_size == 64
    _, source = config_dict("bert/tiny.yaml")
    assert source.file == "bert/tiny.yaml"
    assert load_config("bert/tiny").model.encoder.hidden_size == 128  # no such file: the zoo entry


def test_typo_names_the_nearest_zoo_configs_and_how_to_list_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("bert/bsae")
    message = str(info.value)
    assert "'bert/bsae'" in message and "did you mean 'bert/base'?" in message
    assert "base, large, medium, mini, small, tiny" in message and "modaloom zoo" in message
    with pytest.raises(ConfigError, match=r"did you mean 'gpt2/small'\?.*zoo families: albert, .*modaloom zoo"):
        load_model_config("gtp2/small")
    with pytest.raises(ConfigError, match=r"not a zoo config .*modaloom zoo"):
        zoo_path("vit/b8")


def test_missing_file_that_is_no_zoo_name_is_one_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=r"nowhere\.yaml' is neither an existing file nor a zoo config"):
        load_config(missing)


def test_error_names_the_resolved_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"zoo[/\\]bert[/\\]tiny\.yaml"):
        load_config("bert/tiny", ["model.encoder.hidden_size=oops"])


def _declared_package_data() -> set[Path]:
    """The package data files setuptools would put in a wheel, from pyproject.toml alone (writes nothing)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = Distribution()
    apply_configuration(dist, ROOT / "pyproject.toml")
    dist.include_package_data = False  # only the declaration itself, no egg-info manifest
    build_py = dist.get_command_obj("build_py")
    build_py.ensure_finalized()
    return {(ROOT / src / name).resolve() for _, src, _, names in build_py.data_files for name in names}


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs a source checkout")
def test_package_data_covers_every_zoo_file(monkeypatch):
    monkeypatch.chdir(ROOT)  # packages.find's "where" is relative to the project root
    declared = _declared_package_data()
    zoo_files = {p.resolve() for p in ZOO_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                 and p.suffix != ".py"}
    assert len(zoo_files) == len(zoo_names()) > 40
    assert zoo_files <= declared, sorted(str(p) for p in zoo_files - declared)


@pytest.mark.skipif(not (ROOT / "configs").is_symlink(), reason="needs a source checkout")
def test_checkout_configs_folder_is_the_zoo():
    assert os.readlink(ROOT / "configs") == "src/modaloom/zoo"
    assert (ROOT / "configs" / "bert" / "base.yaml").resolve() == zoo_path("bert/base").resolve()
