"""bench/investigations/host_data.py's pieces run (small: smoke runs, not timings)."""

import sys

import pytest

from bench.investigations import host_data


def test_in_turns_times_every_method():
    calls = []
    times = host_data.in_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               budget=0.001)
    assert set(times) == {"a", "b"} and calls[:4] == ["a", "a", "b", "b"]
    assert calls.count("a") == calls.count("b") >= 7  # two warm calls, then >= 5 in turns


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_memmap_run_reports_its_peak_and_its_bits():
    d, runs = host_data.memmap(0.002)
    assert d == 64 and len(runs) == 2
    for peak, same, first, warm in runs.values():
        assert same and peak > 0 and first > 0 and warm > 0
