"""Benchmark sizes: a smoke run (CI) unless benchmarks are enabled.

``--bench-size=full`` gives the issue's sizes, ``short`` the same with 10x
fewer steps where Python-driven peers take minutes, ``smoke`` tiny ones; the
default is ``full`` with ``--benchmark-enable`` and ``smoke`` otherwise, so
the plain test command runs every benchmark body once, small and untimed.
The peers that compile for seconds (torch.compile, Keras) run at full size,
or at smoke size with ``--slow-peers``; otherwise their cases are skipped.

With ``FSGD_BENCH_TUNE_CPU=1`` in the environment the run measures
``functional_sgd.tune_cpu()`` (set here, before JAX starts) on the workloads
and methods it is meant for; ``python -m bench.run`` runs that second.
"""

import pytest

from bench.methods import tuned_run

if tuned_run():
    import functional_sgd

    functional_sgd.tune_cpu()


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=("smoke", "short", "full"), default=None,
                     help="benchmark workload sizes (default: full when benchmarks "
                          "are enabled, smoke otherwise)")
    parser.addoption("--slow-peers", action="store_true",
                     help="run the peers that compile for seconds (torch.compile, Keras) "
                          "at smoke size too; at full size they always run")


def bench_size(config):
    size = config.getoption("bench_size")
    if size is not None:
        return size
    enabled = not config.getoption("benchmark_disable") or config.getoption("benchmark_enable")
    return "full" if enabled else "smoke"


def slow_peers(config):
    """Whether the peers that compile for seconds run: at full size, or when asked."""
    return bench_size(config) != "smoke" or config.getoption("slow_peers")


SKIPPED = pytest.StashKey[list]()
"""``(workload, method, reason)`` of every case skipped (a peer not installed,
a compiler failing, a slow peer at smoke size): the report lists them."""


def skip_case(config, workload, method, reason):
    config.stash.setdefault(SKIPPED, []).append((workload.name, method.name, reason))
    pytest.skip(f"{method.name}: {reason}")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["skipped"] = [dict(workload=w, method=m, reason=r)
                              for w, m, r in config.stash.get(SKIPPED, [])]


# Standalone probe scripts (issue 6) are run by hand, not collected by pytest.
collect_ignore = ["investigations/scale_probe.py", "investigations/profile_large.py"]
