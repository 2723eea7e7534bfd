"""Benchmarks of functional-sgd against the lesson's torch loop and its peers.

* ``python -m pytest bench --benchmark-enable --bench-size=full``: the suite;
* ``python -m bench.report``: runs it and writes ``bench/results/REPORT.md``;
* ``python -m bench.accelerators``: the same workloads on every device.
"""
