"""Benchmark sizes: a smoke run (CI) unless benchmarks are enabled.

``--bench-size=full`` gives the issue's sizes, ``smoke`` tiny ones; the
default is ``full`` with ``--benchmark-enable`` and ``smoke`` otherwise, so
the plain test command runs every benchmark body once, small and untimed.

With ``FSGD_BENCH_TUNE_CPU=1`` in the environment the run measures
``functional_sgd.tune_cpu()`` (set here, before JAX starts) on the workloads
and methods it is meant for; ``python -m bench.report`` runs that second.
"""

from bench.methods import tuned_run

if tuned_run():
    import functional_sgd

    functional_sgd.tune_cpu()


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=("smoke", "full"), default=None,
                     help="benchmark workload sizes (default: full when benchmarks "
                          "are enabled, smoke otherwise)")


def bench_size(config):
    size = config.getoption("bench_size")
    if size is not None:
        return size
    enabled = not config.getoption("benchmark_disable") or config.getoption("benchmark_enable")
    return "full" if enabled else "smoke"


# Standalone probe scripts (issue 6) are run by hand, not collected by pytest.
collect_ignore = ["scale_probe.py", "profile_large.py"]
