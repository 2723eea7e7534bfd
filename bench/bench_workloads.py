"""Every workload by every method that runs it, grouped by workload.

Each case first times one call with JAX's caches cleared (compile + run,
reported apart as ``first_call_s``), checks the result against a float64
run (so a fast wrong method fails), then times warm calls only. A peer that
cannot run here (not installed, its compiler failing) is skipped with the
reason, as are the peers that compile for seconds in a smoke run; the
benchmark JSON lists them under ``"skipped"``.
"""

import time

import pytest

from bench import timing
from bench.conftest import bench_size, skip_case, slow_peers
from bench.methods import Unavailable, methods_for
from bench.workloads import AGREEMENT, SIZES, close_to_truth, make_problem, truth

BUDGET_S = {"full": 2.0, "short": 1.0, "smoke": 0.05}  # timed seconds per case
MIN_ROUNDS, MAX_ROUNDS = 3, 5000


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = [(w, m) for w in SIZES[bench_size(metafunc.config)] for m in methods_for(w)]
        metafunc.parametrize("case", cases, ids=[f"{w.name}-{m.name}" for w, m in cases])


@pytest.fixture(scope="module")
def problems():
    """Data, schedule and float64 answer per workload, drawn once per module."""
    cache = {}

    def get(workload):
        if workload not in cache:
            problem = make_problem(workload)
            cache[workload] = problem, truth(problem)
        return cache[workload]

    return get


def test_workload(benchmark, case, problems, request):
    workload, method = case
    if method.slow and not slow_peers(request.config):
        skip_case(request.config, workload, method, "compiles for seconds: runs at "
                  "--bench-size=full, or with --slow-peers")
    problem, expected = problems(workload)
    # Clearing the caches costs recompiling everything: only worth it when timed.
    fresh = benchmark.enabled and method.on_jax
    try:
        run = method.prepare(problem, None)
        first_call_s = timing.first_call(run, fresh=fresh)
    except Unavailable as why:
        skip_case(request.config, workload, method, str(why))
    began = time.perf_counter()
    params = run()  # warm: its time sets the number of rounds
    warm_s = time.perf_counter() - began
    error = close_to_truth(params, expected)
    assert error <= AGREEMENT, f"{method.name} disagrees with float64 by {error:.2e}"

    benchmark.group = workload.name
    benchmark.extra_info.update(
        workload=workload.name, method=method.name, label=workload.label, n=workload.n,
        d=workload.d, steps=workload.steps, sweep=workload.sweep, large=workload.large,
        x_bytes=workload.x_bytes, first_call_s=first_call_s, error=error)
    if benchmark.enabled:
        rounds = timing.rounds_for(warm_s, budget=BUDGET_S[bench_size(request.config)],
                                   min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS)
        benchmark.pedantic(run, rounds=rounds)  # the two calls above warmed it up
    else:
        benchmark.pedantic(run)  # a smoke run: once, untimed
