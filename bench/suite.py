"""The benchmark suite run in a child pytest, its JSON trimmed, and times written.

Shared by the report (this checkout's suite, as users get it and under
``tune_cpu()``) and the side-by-side comparison (two checkouts' suites).
"""

import json
import os
import pathlib
import subprocess
import sys

SUITE = pathlib.Path("bench") / "bench_workloads.py"
TUNE_CPU_ENV = "FSGD_BENCH_TUNE_CPU"  # bench.methods.TUNE_CPU_ENV (not imported: no jax here)


def outside_xdist(env):
    """``env`` without pytest-xdist's worker variables (``PYTEST_XDIST_*``):
    a pytest started from an xdist worker takes itself for one, and
    pytest-benchmark then turns itself off and writes no JSON."""
    return {name: value for name, value in env.items() if not name.startswith("PYTEST_XDIST")}


def run_suite(checkout, json_path, size, select=None, *, tuned=False, log_path=None,
              plugins=(), env=None):
    """Runs ``checkout``'s own suite in a child ``python -m pytest`` with
    ``cwd=checkout`` and ``checkout`` first on ``PYTHONPATH``, so the child
    imports that checkout's code; returns its exit code.

    Args:
      select: a pytest ``-k`` expression choosing cases.
      tuned: run it under ``functional_sgd.tune_cpu()`` (a process-wide
        setting, hence the child); otherwise as users get it.
      log_path: where the child's output goes (default: this process's).
      plugins: pytest plugins to load (``-p``), importable from ``env``.
      env: more environment variables for the child.
    """
    checkout = pathlib.Path(checkout)
    child_env = {**outside_xdist(os.environ), **(env or {}), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(checkout), (env or {}).get("PYTHONPATH"),
                      os.environ.get("PYTHONPATH")]))}
    child_env.pop(TUNE_CPU_ENV, None)
    if tuned:
        child_env[TUNE_CPU_ENV] = "1"
    command = [sys.executable, "-m", "pytest", str(checkout / SUITE), "-p", "no:cacheprovider",
               *[arg for plugin in plugins for arg in ("-p", plugin)], "-q",
               "--benchmark-enable", f"--bench-size={size}", f"--benchmark-json={json_path}"]
    if select:
        command += ["-k", select]
    if log_path is None:
        return subprocess.run(command, check=False, cwd=checkout, env=child_env).returncode
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        return subprocess.run(command, check=False, cwd=checkout, env=child_env, stdout=log,
                              stderr=subprocess.STDOUT).returncode


def drop_round_times(json_path):
    """Keeps the statistics, drops every round's time (megabytes at full size)."""
    path = pathlib.Path(json_path)
    data = json.loads(path.read_text())
    for benchmark in data["benchmarks"]:
        benchmark["stats"].pop("data", None)
    path.write_text(json.dumps(data, indent=1))


def format_time(seconds):
    """Seconds in the unit that reads best; ``"-"`` for ``None``.

    >>> format_time(0.0123), format_time(2.5), format_time(4.2e-5), format_time(3e-9)
    ('12.3 ms', '2.5 s', '42 us', '3 ns')
    >>> format_time(None)
    '-'
    """
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:,.3g} {unit}"
    return f"{seconds * 1e9:,.3g} ns"
