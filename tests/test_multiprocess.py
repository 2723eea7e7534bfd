"""Data-parallel ``fit`` across 2 processes (``jax.distributed`` on 127.0.0.1,
CPU collectives) agrees with one process on one device.

Each process simulates 2 CPU devices, so the mesh spans 4 devices in 2
processes. Tolerance: float64 relative 1e-12, as in tests/test_parallel.py
(only the order of additions differs); the two processes must see identical
bits, since they hold the same replicated result.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

import multiprocess_run
from helpers import cpu_subprocess_env, max_relative_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def views():
    """What each of the 2 processes printed (each on the CPU platform: two
    processes on one GPU would fail in NCCL with "Duplicate GPU detected")."""
    env = cpu_subprocess_env(2, ROOT)
    port = str(free_port())
    script = os.path.join(ROOT, "tests", "multiprocess_run.py")
    processes = [subprocess.Popen([sys.executable, script, str(i), str(PROCESSES), port],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(PROCESSES)]
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=240)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outputs


def test_the_processes_form_one_mesh(views):
    assert sorted(v["process_index"] for v in views) == list(range(PROCESSES))
    for view in views:
        assert view["process_count"] == PROCESSES
        assert view["device_count"] == 2 * PROCESSES and view["local_device_count"] == 2


def test_every_process_sees_the_same_result(views):
    assert views[0]["results"] == views[1]["results"]


@pytest.fixture(scope="module")
def one_process():
    with jax.enable_x64(True):
        return multiprocess_run.run()


@pytest.mark.parametrize("mode", multiprocess_run.MODES)
def test_two_processes_agree_with_one(views, one_process, mode):
    one = one_process[mode]
    many = views[0]["results"][mode]
    assert max_relative_error(many["params"], one["params"]) <= 1e-12
    assert max_relative_error(many["losses"], one["losses"]) <= 1e-12
    assert many["losses"][-1] < 0.1 * many["losses"][0]  # it trained
