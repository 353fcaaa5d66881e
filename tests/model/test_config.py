"""Config loading: typed validation, file:line in errors, nearest-name hints, overrides."""

import pytest

from modaloom.config import load_config
from modaloom.errors import ConfigError


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_file_line_and_nearest(tmp_path):
    path = write(tmp_path, "model:\n  encoder:\n    hidden_size: 64\n    heads_nm: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}:4" in msg and "model.encoder.heads_nm" in msg and "did you mean 'heads_num'" in msg


def test_bad_choice_lists_valid_choices(tmp_path):
    path = write(tmp_path, "model:\n  encoder:\n    norm_position: middle\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: model.encoder.norm_position: bad value 'middle'.*post, pre"):
        load_config(path)


def test_wrong_type_is_refused(tmp_path):
    path = write(tmp_path, "model:\n  encoder:\n    layers_num: two\n")
    with pytest.raises(ConfigError, match="expected an integer, got 'two'"):
        load_config(path)


def test_inconsistent_dimensions(tmp_path):
    path = write(tmp_path, "model:\n  encoder:\n    hidden_size: 100\n    heads_num: 3\n")
    with pytest.raises(ConfigError, match="hidden_size 100 is not divisible by heads_num 3"):
        load_config(path)


def test_json_config_and_overrides(tmp_path):
    path = write(tmp_path, '{"model": {"encoder": {"hidden_size": 64, "heads_num": 4}}}', "c.json")
    cfg = load_config(path, ["model.encoder.layers_num=3", "model.targets.0.weight=0.5"])
    assert cfg.model.encoder.layers_num == 3 and cfg.model.encoder.hidden_size == 64
    assert cfg.model.targets[0].weight == 0.5


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'", "1e400"])
def test_non_finite_float_in_a_file_names_file_line_and_key(tmp_path, value):
    path = write(tmp_path, f"train:\n  steps: 3\n  lr: {value}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: train.lr: expected a finite number"):
        load_config(path)


def test_override_error_names_the_override_even_for_a_key_in_the_file(tmp_path):
    path = write(tmp_path, "model:\n  encoder:\n    layers_num: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.encoder.layers_num=-x"])
    assert str(err.value).startswith(f"override model.encoder.layers_num=-x (config {path}): expected an integer")
    with pytest.raises(ConfigError, match=r"^override model.targets=\[\{type: mlmm\}\] \(config .*c.yaml\): "
                                          r"model.targets.0.type"):
        load_config(path, ["model.targets=[{type: mlmm}]"])
    with pytest.raises(ConfigError, match=r"c.yaml:3: model.encoder.layers_num"):  # the file's own value
        load_config(write(tmp_path, "model:\n  encoder:\n    layers_num: two\n"), ["train.lr=0.1"])


def test_override_without_a_file_names_only_the_override():
    with pytest.raises(ConfigError, match=r"^override train.lr=nan: expected a finite number, got 'nan'"):
        load_config(None, ["train.lr=nan"])


def test_override_must_name_a_section():
    with pytest.raises(ConfigError, match="must start with model., data. or train."):
        load_config(None, ["encoder.layers_num=3"])


def test_invalid_yaml_points_at_line(tmp_path):
    path = write(tmp_path, "model:\n  encoder: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
