"""``benchmarks/gpu.py`` in its reduced CPU form (so that it cannot rot without a GPU), and its peak table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_trains_through_the_project_trainer(gpu, capsys):
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--cpu-smoke", "--json", "--peak-tflops", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert result["smoke"] and result["steps"] == 2 and result["batch_size"] == 2 and result["seq_length"] == 32
    assert result["tokens_per_second"] > 0 and result["flops_per_token"] > 0
    assert 0 < result["mfu"] < result["mfu_with_head"] < 1  # against the 1 TFLOPS peak given
    assert torch.isfinite(torch.tensor(result["final_loss"]))


def test_known_peaks_by_device_name(gpu):
    assert gpu.known_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.known_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu.known_peak("NVIDIA H200") == 989e12
    assert gpu.known_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.known_peak("NVIDIA L40S") == 362e12 and gpu.known_peak("NVIDIA L4") == 121e12
    assert gpu.known_peak("Tesla V100-SXM2-16GB") is None


def test_report_reads_mfu_against_the_peak(gpu):
    result = {"device": "NVIDIA H200", "smoke": False, "config": "gpt2/small", "compile": True,
              "parameters": 124_439_808, "batch_size": 16, "seq_length": 1024, "steps": 30, "seconds": 3.0,
              "tokens_per_second": 500_000.0, "peak_flops": 989e12, "mfu": 0.51, "mfu_with_head": 0.6,
              "final_loss": 7.0, "max_memory_gib": 40.0}
    text = gpu.report(result)
    assert "tokens/s: 500,000" in text and "MFU: 51.0% (with the tied LM head 60.0%) of 989 TFLOPS" in text
    assert "n/a" in gpu.report({**result, "mfu": None, "max_memory_gib": None})
