"""The measured matmul peak (the MFU denominator) and its cache: a remeasurement never lowers it, since a
measurement under load is too low and would inflate every MFU computed against it."""

import json

import torch

from nextrl.accounting import peak


def test_remeasuring_keeps_the_best_rate_seen(tmp_path, monkeypatch):
    rates = iter([100e9, 50e9, 200e9, 7e9])
    monkeypatch.setattr(peak, "measure_matmul_peak", lambda device, dtype: next(rates))
    cpu = torch.device("cpu")
    assert peak.matmul_peak(cpu, torch.float32, tmp_path) == 100e9  # measured on first use
    assert peak.matmul_peak(cpu, torch.float32, tmp_path) == 100e9  # then read from the cache
    assert peak.matmul_peak(cpu, torch.float32, tmp_path, remeasure=True) == 100e9  # a loaded machine: kept
    assert peak.matmul_peak(cpu, torch.float32, tmp_path, remeasure=True) == 200e9  # a better rate: taken
    assert peak.matmul_peak(cpu, torch.bfloat16, tmp_path) == 7e9  # another dtype has its own entry
    table = json.loads((tmp_path / "matmul_peak.json").read_text())
    assert sorted(table.values()) == [7e9, 200e9]


def test_the_cache_key_names_the_processor_and_threads():
    key = peak._key(torch.device("cpu"), torch.float32)
    assert peak._cpu_model().replace(" ", "_") in key and f"{torch.get_num_threads()}threads" in key
    assert key.endswith(f"float32-torch{torch.__version__}") and " " not in key
