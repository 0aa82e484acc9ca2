"""Paired timing: the median's interval equals the binomial order-statistics interval, rounds rotate
the order of the calls, and a speed-up measured round by round survives a machine whose speed swings
between rounds, which timing one model after the other does not."""

import pytest
import torch
from scipy.stats import binom
from torch import nn

from convforge.measure import latency as latency_module
from convforge.measure import paired
from convforge.measure.latency import median_interval, summarise
from convforge.measure.paired import Ratio, paired_speedup, per_round_ratio, rotating_rounds, time_interleaved


@pytest.mark.parametrize("n", [1, 5, 6, 7, 9, 15, 30, 61, 200])
def test_the_median_interval_is_the_binomial_order_statistics_interval(n):
    values = [float(i) for i in range(n)]  # x_(k) = k - 1
    # reference: the largest j with P(Binomial(n, 1/2) <= j - 1) <= 2.5%; no such j below n = 6
    j = max((k for k in range(1, n // 2 + 1) if binom.cdf(k - 1, n, 0.5) <= 0.025), default=0)
    median, low, high = median_interval(values[::-1])  # order does not matter
    assert median == pytest.approx((n - 1) / 2)
    assert (low, high) == ((j - 1, n - j) if j else (0, n - 1))
    if n == 9:
        assert (low, high) == (1, 7)  # the textbook interval x_(2), x_(8)


def test_a_latency_is_noisy_when_its_median_is_not_known_within_the_spread():
    steady = summarise([0.010 + 0.0001 * (i % 3) for i in range(50)], batch=1)
    assert not steady.noisy and steady.p50_low_ms <= steady.p50_ms <= steady.p50_high_ms
    swinging = summarise([0.010 * (1 + 9 * (i % 2)) for i in range(50)], batch=1)  # 10 ms and 100 ms alternating
    assert swinging.noisy and swinging.to_dict()["noisy"] is True


def test_rounds_rotate_the_order_of_the_calls():
    order = []
    timed = time_interleaved({name: (lambda n=name: order.append(n)) for name in "abc"}, batch=1, warmup=1,
                             budget_seconds=0.0, min_rounds=3)  # fmt: skip
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # one warm-up round, then rotating
    assert timed.rounds == 3 and set(timed.seconds) == set("abc")
    order.clear()  # a turn: one untimed call to settle, then two timed ones whose median is the round's time
    timed = time_interleaved({name: (lambda n=name: order.append(n)) for name in "ab"}, batch=1, warmup=0,
                             budget_seconds=0.0, min_rounds=2, turn=2, settle=1)  # fmt: skip
    assert order == list("aaabbb") + list("bbbaaa")
    assert timed.rounds == 2 and len(timed.calls["a"]) == 4 and timed.latency("a").iterations == 4


def test_a_speedup_survives_a_machine_whose_speed_swings_between_rounds(monkeypatch):
    """Model A costs twice model B, on a machine that runs 1x or 40x slower from one round to the next
    (another process taking the cores): round by round the ratio is exactly 2, while timing A's calls then
    B's would compare the machine's two moods."""
    load = {"round": 0}
    cost = {"a": 2.0, "b": 1.0}

    def fake_timer(device):
        def timed(call):
            name = call()
            seconds = cost[name] * (40.0 if (load["round"] // 2) % 2 else 1.0)
            load["round"] += 1
            return seconds

        return timed

    monkeypatch.setattr(paired, "timer_for", fake_timer)
    timed = time_interleaved({"a": lambda: "a", "b": lambda: "b"}, batch=1, warmup=0, budget_seconds=0.0,
                             min_rounds=31)  # fmt: skip
    ratio = timed.ratio("a", "b")
    assert (ratio.median, ratio.low, ratio.high, ratio.rounds) == (2.0, 2.0, 2.0, 31)
    assert ratio.holds(2.0) and not ratio.noisy
    assert timed.latency("a").noisy  # the latency alone swings 40x: not a figure to quote
    # timing each alone, as before, compares two moments of the machine
    monkeypatch.setattr(latency_module, "timer_for", fake_timer)
    load["round"] = 0  # A's two calls land in a fast phase, B's in a slow one
    alone_a = latency_module.time_calls(lambda: "a", batch=1, warmup=0, iterations=2)
    alone_b = latency_module.time_calls(lambda: "b", batch=1, warmup=0, iterations=2)
    assert alone_a.p50_ms / alone_b.p50_ms == pytest.approx(2.0 / 40.0)


def test_a_wide_interval_is_noisy_and_holds_no_target():
    ratio = Ratio(median=1.6, low=0.9, high=2.4, rounds=15)
    assert ratio.noisy and not ratio.holds(1.5)
    assert Ratio(median=1.6, low=1.55, high=1.66, rounds=15).holds(1.5)


def test_paired_speedup_of_two_real_models():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    narrow = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    threads = torch.get_num_threads()
    wide_ms, narrow_ms, ratios = paired_speedup(wide, narrow, (3, 32, 32), (1, 4), 0.05, threads=1)
    assert set(wide_ms) == set(narrow_ms) == set(ratios) == {1, 4}
    assert all(r.rounds >= paired.MIN_ROUNDS and r.low <= r.median <= r.high for r in ratios.values())
    assert torch.get_num_threads() == threads


def test_whole_runs_rotate_and_their_ratio_is_taken_round_by_round():
    """rotating_rounds (benchmarks that compare whole training runs or servers): each round runs every
    setup once in a rotating order, and per_round_ratio divides within a round, so a machine that
    halves its speed between rounds leaves a rate ratio of exactly 3."""
    order, machine = [], iter([1.0, 1.0, 0.5, 0.5, 1.0, 1.0])
    rates = {"fast": 300.0, "slow": 100.0}

    def run(name):
        order.append(name)
        return rates[name] * next(machine)

    runs = rotating_rounds({name: (lambda n=name: run(n)) for name in rates}, rounds=3)
    assert order == ["fast", "slow", "slow", "fast", "fast", "slow"]
    assert runs["fast"] == [300.0, 150.0, 300.0] and runs["slow"] == [100.0, 50.0, 100.0]
    ratio = per_round_ratio(runs["fast"], runs["slow"])  # rates: the faster one's first
    assert (ratio.median, ratio.low, ratio.high, ratio.rounds) == (3.0, 3.0, 3.0, 3)
    assert ratio.text() == "3.00x (3.00-3.00)"
    assert Ratio(1.5, 1.0, 2.0, 9).text() == "too noisy to quote (1.00-2.00x)"  # wider than NOISY_SPREAD: no figure
    assert Ratio(1.5, 1.45, 1.55, 9).text(" faster") == "1.50x faster (1.45-1.55)"
    assert Ratio.from_dict(Ratio(1.5, 1.45, 1.55, 9).to_dict()) == Ratio(1.5, 1.45, 1.55, 9)
