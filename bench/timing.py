"""Timing without pytest: first call apart from warm calls, rounds by budget.

Used by the accelerator comparison; the pytest-benchmark suite uses
:func:`first_call` and :func:`rounds_for` and lets pytest-benchmark time.
"""

import statistics
import time

import jax


def first_call(run, *, fresh=True):
    """Seconds of one call of ``run``; with ``fresh``, JAX's compilation caches
    are cleared first, so a JAX run pays tracing and compiling as a new
    process would."""
    if fresh:
        jax.clear_caches()
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def rounds_for(seconds_per_call, *, budget, min_rounds, max_rounds):
    """How many timed rounds fit in ``budget`` seconds, within the bounds.

    >>> rounds_for(0.5, budget=2.0, min_rounds=3, max_rounds=100)
    4
    >>> rounds_for(10.0, budget=2.0, min_rounds=3, max_rounds=100)
    3
    """
    wanted = int(budget / max(seconds_per_call, 1e-9))
    return max(min_rounds, min(max_rounds, wanted))


def median_seconds(run, *, budget, min_rounds=3, max_rounds=1000, call_s=None):
    """Median of warm calls filling ``budget``. ``call_s``: the time of a warm
    call already made; without it, one warm-up call is made and timed first."""
    if call_s is None:
        began = time.perf_counter()
        run()  # warm-up: nothing compiled or lazily set up is timed below
        call_s = time.perf_counter() - began
    rounds = rounds_for(call_s, budget=budget, min_rounds=min_rounds, max_rounds=max_rounds)
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
