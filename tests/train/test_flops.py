import torch

from modaloom.train.flops import flops_per_token, matmul_parameters, measure_matmul_peak
from tests.train.standins import TinyRegressor


def test_matmul_parameters_count_linear_weights_only():
    model = TinyRegressor(vocab=50, hidden=16)
    assert matmul_parameters(model) == 16 * 16 * 2 + 16  # two blocks and the head; not the embedding
    assert flops_per_token(model, 128) == 6 * matmul_parameters(model)  # no config: no attention term


def test_matmul_peak_is_positive_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from modaloom.train import flops

    flops._PEAK_CACHE.clear()
    peak = measure_matmul_peak(torch.device("cpu"), size=256)
    assert peak > 1e8
    assert (tmp_path / "modaloom" / "matmul_peak.json").is_file()
    assert measure_matmul_peak(torch.device("cpu"), size=256) == peak


def test_output_layer_tied_to_the_embedding_is_not_counted():
    model = TinyRegressor(vocab=50, hidden=16)
    model.out = torch.nn.Linear(16, 50, bias=False)
    model.out.weight = model.embed.weight
    assert matmul_parameters(model) == 16 * 16 * 2 + 16


def test_a_stale_low_cached_peak_is_replaced_by_a_fresh_measurement(tmp_path, monkeypatch):
    import json

    from modaloom.train import flops

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    flops._PEAK_CACHE.clear()
    key = flops._device_key(torch.device("cpu"), torch.float32)
    (tmp_path / "modaloom").mkdir()
    (tmp_path / "modaloom" / "matmul_peak.json").write_text(json.dumps({key: 1.0}))
    peak = measure_matmul_peak(torch.device("cpu"), size=256)
    assert peak > 1e8
    assert json.loads((tmp_path / "modaloom" / "matmul_peak.json").read_text())[key] == peak
    flops._PEAK_CACHE.clear()
