"""tune_cpu: process-wide settings, so each case runs in a fresh interpreter."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import MODES_FOR_TUNING, requires_cpu

import functional_sgd as fsgd
from functional_sgd.speed import _cpu as _tuning

CHILD = """
import json, os, sys
import jax, jax.numpy as jnp
import functional_sgd as fsgd
from functional_sgd.core import LoopSpec, Inputs, initialize
from functional_sgd.core._repeat import loop as fit_loop
from functional_sgd.speed import CPU_COMPILER_OPTIONS
made = fsgd.tune_cpu()
sys.path.insert(0, {tests!r})
from helpers import MODES_FOR_TUNING, X, Y, START
results = {{name: fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=60, **kwargs)
            for name, kwargs in MODES_FOR_TUNING.items()}}
spec = LoopSpec(fsgd.linear_mse, steps=60)
loop = jax.jit(fit_loop, static_argnames="spec", compiler_options=CPU_COMPILER_OPTIONS).lower(
    initialize(spec, START, None, 0, jnp.float32), Inputs((X, Y), 0.1, None, None, None, None),
    spec=spec).compile().as_text()
print(json.dumps({{
    "made": made,
    "async": jax.config.read("jax_cpu_enable_async_dispatch"),
    "one_kernel": "xla_cpu_small_call" in loop,
    "results": {{name: {{"params": r.params.tolist(), "losses": r.losses.tolist()}}
                for name, r in results.items()}},
}}))
"""
TESTS = os.path.dirname(__file__)


def run_child(xla_flags=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    done = subprocess.run([sys.executable, "-c", CHILD.format(tests=TESTS)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tuned():
    return run_child()


@requires_cpu
def test_both_settings_take_effect(tuned):
    assert tuned["made"] == {
        "jax_cpu_enable_async_dispatch": False,
        "XLA_FLAGS": "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=65536"}
    assert tuned["async"] is False
    assert tuned["one_kernel"]  # the lesson's loop is compiled as a single kernel


@requires_cpu
@pytest.mark.parametrize("mode", MODES_FOR_TUNING)
def test_results_agree_with_the_default_backend(tuned, mode):
    """float32; a loop compiled as one kernel may round a reduction
    differently, so losses agree to a few ulps of their size, not bit for bit."""
    from helpers import START, X, Y
    plain = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=60,
                     **MODES_FOR_TUNING[mode])
    got = tuned["results"][mode]
    np.testing.assert_allclose(got["params"], plain.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["losses"], plain.losses, rtol=1e-5, atol=1e-6)


@requires_cpu
def test_a_threshold_the_user_chose_is_kept():
    chosen = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0"
    child = run_child(chosen)
    assert "XLA_FLAGS" not in child["made"] and not child["one_kernel"]


def test_other_backend_options_are_kept():
    merged = _tuning._with_backend_option(
        "--xla_dump_to=/tmp/d --xla_backend_extra_options=a=1", "b=2")
    assert merged == "--xla_dump_to=/tmp/d --xla_backend_extra_options=a=1,b=2"
    assert _tuning._with_backend_option("", "b=2") == "--xla_backend_extra_options=b=2"


def test_too_late_is_an_error_and_changes_nothing():
    jnp.zeros(1).block_until_ready()  # the backend of this process is running
    flags = os.environ.get("XLA_FLAGS")
    with pytest.raises(RuntimeError, match="before JAX starts its backends"):
        fsgd.tune_cpu()
    assert os.environ.get("XLA_FLAGS") == flags
    assert jax.config.read("jax_cpu_enable_async_dispatch") is True
