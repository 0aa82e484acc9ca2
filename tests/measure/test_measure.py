"""Counting, timing and peak memory: exact where the answer is known."""

import pytest
import torch
from torch import nn

from convforge.measure import measure_latency, measure_model, peak_activation_bytes, time_calls
from convforge.measure.latency import summarise


def test_peak_activation_memory_counts_live_tensors_once():
    # conv -> relu (not in place) -> conv on 1x3x10x10: the first conv and the relu output 8 x 10 x 10
    # floats (3,200 bytes), the last conv 2 x 10 x 10 (800); the relu's input is alive while it runs
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    assert peak_activation_bytes(model, torch.zeros(1, 3, 10, 10)) == 3200 + 3200
    # in place, the relu writes into its input's storage: the peak is the first conv's output and the last's
    in_place = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 2, 1)).eval()
    assert peak_activation_bytes(in_place, torch.zeros(1, 3, 10, 10)) == 3200 + 800
    # and the peak grows with the batch
    assert peak_activation_bytes(model, torch.zeros(4, 3, 10, 10)) == 4 * (3200 + 3200)


def test_percentiles_of_known_times():
    times = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    latency = summarise(times, batch=10)
    assert latency.p50_ms == pytest.approx(50.5)
    assert latency.p90_ms == pytest.approx(90.1)
    assert latency.p99_ms == pytest.approx(99.01)
    assert latency.images_per_second == pytest.approx(10 / 0.0505)
    assert latency.iterations == 100


def test_time_calls_runs_warmup_then_a_fixed_count_or_a_budget():
    calls = []
    latency = time_calls(lambda: calls.append(1), batch=1, warmup=3, iterations=7)
    assert len(calls) == 10 and latency.iterations == 7
    calls.clear()
    latency = time_calls(lambda: calls.append(1), batch=1, warmup=0, budget_seconds=0.0, min_iterations=5)
    assert latency.iterations == 5


def test_measure_model_reports_counts_memory_and_latency_per_batch():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    threads_before = torch.get_num_threads()
    cost = measure_model(model, (3, 16, 16), batches=(1, 4), threads=1, budget_seconds=0.05)
    assert cost.params == 3 * 8 * 9 + 8 + 8 * 256 * 10 + 10
    assert cost.macs == 3 * 8 * 9 * 256 + 8 * 256 * 10
    assert [row.batch for row in cost.latency] == [1, 4] and cost.threads == 1
    assert cost.peak_activation_bytes[4] == 4 * cost.peak_activation_bytes[1]
    assert torch.get_num_threads() == threads_before  # measured with 1 thread, then restored
    assert measure_latency(model, (3, 16, 16), 2, iterations=3, warmup=0).iterations == 3
