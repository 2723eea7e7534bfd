"""Data-parallel ``fit(..., mesh=)`` equals single-device ``fit``.

Tolerance: float64 relative 1e-12 on params and losses. The devices add the
same per-row terms as one device, in another order (a sum per device, then
an all-reduce), so the two differ by rounding only: a few ulps a step,
~1e-15 measured over 120 steps; 1e-12 leaves three orders of headroom and
still catches any real error (a row counted twice or dropped moves the
loss by ~1e-2).

2 and 8 devices are simulated on CPU in one subprocess (the device count is
fixed when jax starts); 1 device runs here.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from helpers import cpu_subprocess_env, max_relative_error
from multidevice_checks import MESHES, STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-12
CASES = [(mesh, mode) for mesh, modes in MESHES.items() for mode in modes]


def run_on_devices(script, count, timeout=240):
    """Runs ``tests/<script>`` on ``count`` simulated CPU devices (on the CPU
    platform, also on a GPU machine); its JSON output."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", script)],
                          env=cpu_subprocess_env(count, ROOT),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report():
    return run_on_devices("multidevice_checks.py", 8)


@pytest.mark.parametrize("mesh, mode", CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_data_parallel_equals_one_device(report, mesh, mode):
    assert report["device_count"] == 8
    measured = report[mesh][mode]
    assert measured["devices"] == int(mesh.split("/")[0])  # it really ran sharded
    assert measured["params"] <= TOLERANCE and measured["losses"] <= TOLERANCE
    assert measured["trained"] < 0.05  # agreement on a run that learned the line


def test_2x4_mesh_momentum_trajectory_chunks_stop_rule_and_checkpoint(report):
    extras = report["extras"]
    resumed = extras["2x4-checkpoint-resumed"]
    assert resumed["resumed_from"] == STEPS // 2  # from the checkpoint, not the start
    assert resumed["error"] == 0.0  # crashed, resumed: the same bits
    assert extras["2x4-momentum"] <= TOLERANCE  # params, losses, opt_state, trajectory
    assert extras["2x4-chunks-vs-one-call"] == 0.0  # chunks give the same bits
    steps_many, steps_one = extras["2x4-tol-steps"]
    assert steps_many == steps_one < 500  # the stop rule fired at the same step
    assert extras["2x4-tol"] <= TOLERANCE
    assert extras["2x4-recompiles"] == 0  # new data, params and key reuse the compile


def test_2x4_mesh_stop_rule_on_held_out_data(report):
    measured = report["extras"]["2x4-monitor"]
    steps_one, *steps_mesh = measured["steps"]
    assert steps_one < 400 and steps_mesh == [steps_one] * 3  # stopped at the same step
    assert measured["eval_steps_equal"]
    assert measured["vs-one-device"] <= TOLERANCE  # rounding of the all-reduce only
    assert measured["chunked-vs-one-call"] == 0.0  # same bits
    assert measured["resumed-vs-one-call"] == 0.0


def one_device_mesh():
    return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


@pytest.mark.parametrize("kwargs", [{}, {"batch_size": 3, "key": jax.random.key(1)}],
                         ids=["batch", "mini-batch"])
def test_one_device_mesh_equals_fit(x64, kwargs):
    x, y = fsgd.lesson_data(jax.random.key(0), n=40, dtype=jnp.float64)
    start = np.array(fsgd.LESSON_START)
    one = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=60, **kwargs)
    mesh = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=60, run=fsgd.Run(mesh=one_device_mesh()),
                    **kwargs)
    assert max_relative_error(mesh, one) <= TOLERANCE


def test_mesh_does_not_modify_the_data():
    x, y = (np.asarray(a) for a in fsgd.lesson_data(jax.random.key(0), n=13))
    copies = x.copy(), y.copy()
    fsgd.fit(fsgd.linear_mse, np.zeros(2, np.float32), (x, y), lr=0.1, steps=3,
             run=fsgd.Run(mesh=one_device_mesh()))
    for original, copy in zip((x, y), copies):
        np.testing.assert_array_equal(original, copy)


def test_bad_mesh_arguments_are_refused():
    x, y = fsgd.lesson_data(jax.random.key(0))
    start = jnp.array(fsgd.LESSON_START)
    with pytest.raises(TypeError, match=r"Run\(mesh=\) must be a jax.sharding.Mesh.*got list"):
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=3, run=fsgd.Run(mesh=jax.devices()))
    with pytest.raises(ValueError, match="data is \\(\\): a data-free objective"):
        fsgd.fit(lambda p: (p ** 2).sum(), start, lr=0.1, steps=3, run=fsgd.Run(mesh=one_device_mesh()))

    def over_pairs_of_rows(p, x, y):  # not a mean over rows: needs an even count
        return fsgd.mse(fsgd.linear(p, x), y) + 0.0 * x.reshape(-1, 2, 2).sum()

    with pytest.raises(ValueError, match="loss is evaluated on batches of one row"):
        fsgd.fit(over_pairs_of_rows, start, (x, y), lr=0.1, steps=3, run=fsgd.Run(mesh=one_device_mesh()))


def test_mesh_runs_the_plain_loop_where_auto_would_pick_the_moments(x64):
    x, y = fsgd.lesson_data(jax.random.key(0), n=1000, dtype=jnp.float64)
    start = np.array(fsgd.LESSON_START)
    kwargs = dict(lr=0.1, steps=60)  # steps * n * d = 120 000: auto picks the moments
    with pytest.raises(ValueError, match=r"SpeedPlan\(exact_moments=True\) cannot run: it runs on one device"):
        fsgd.fit(fsgd.linear_mse, start, (x, y), run=fsgd.Run(mesh=one_device_mesh(), speed=fsgd.speed.SpeedPlan(exact_moments=True)),
                 **kwargs)
    plain = fsgd.fit(fsgd.linear_mse, start, (x, y), run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=False)), **kwargs)
    mesh = fsgd.fit(fsgd.linear_mse, start, (x, y), run=fsgd.Run(mesh=one_device_mesh()), **kwargs)
    assert max_relative_error(mesh, plain) <= TOLERANCE
