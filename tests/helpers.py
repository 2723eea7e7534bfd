"""Shared test helpers: comparing pytrees, counting compilations, and what
differs between backends (tolerances, CPU-only cases, subprocess set-up)."""

import contextlib
import os

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd

KEY = jax.random.key(0)
X, Y = fsgd.lesson_data(KEY)  # the lesson's data, float32
START = jnp.array(fsgd.LESSON_START)
MODES_FOR_TUNING = {  # one case per way a step finds its rows
    "batch": {},
    "mini-batch": {"batch_size": 10, "key": jax.random.key(1)},
    "stochastic": {"batch_size": 1, "key": jax.random.key(1)},
}


def fit_lesson(**kwargs):
    """``fsgd.fit`` of the lesson's line: lr 0.1, 100 steps unless overridden."""
    kwargs = {"lr": 0.1, "steps": 100, **kwargs}
    return fsgd.fit(fsgd.linear_mse, kwargs.pop("params", START), kwargs.pop("data", (X, Y)),
                    **kwargs)


def assert_trees_close(actual, expected, *, rtol=0.0, atol=0.0, equal_nan=True):
    """Same structure first, then every leaf close within ``rtol``/``atol``."""
    actual_leaves, actual_def = jax.tree.flatten(actual)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    assert actual_def == expected_def, f"structure {actual_def} != {expected_def}"
    for i, (a, e) in enumerate(zip(actual_leaves, expected_leaves)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"leaf {i}: shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=equal_nan,
                                   err_msg=f"leaf {i}")


def assert_same_bits(actual, expected):
    """Same structure, and every leaf the same type of value with the same bits
    (dtype and shape too: -0.0 is not 0.0, a key is its key data)."""
    actual_leaves, actual_def = jax.tree.flatten(actual)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    assert actual_def == expected_def
    for a, e in zip(actual_leaves, expected_leaves):
        if jax.dtypes.issubdtype(getattr(e, "dtype", None), jax.dtypes.prng_key):
            assert a.dtype == e.dtype
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        if hasattr(e, "dtype"):
            a, e = np.asarray(a), np.asarray(e)
            assert (a.dtype, a.shape) == (e.dtype, e.shape)
            assert a.tobytes() == e.tobytes()
        else:
            assert type(a) is type(e) and (a is e or a == e)


def max_relative_error(actual, expected):
    """Largest ``|a - e| / |e|`` over all leaves (``|e|`` floored at tiny)."""
    worst = 0.0
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        scale = np.maximum(np.abs(e), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(a - e) / scale)))
    return worst


@contextlib.contextmanager
def count_compilations():
    """Counts XLA backend compilations inside the block: ``with ... as n: n[0]``."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


class Crash(Exception):
    """Raised by :func:`crash_after`: a run killed mid-way, in tests of resuming."""


def crash_after(step):
    """An ``on_chunk`` that raises :class:`Crash` once the run reaches ``step``."""
    def on_chunk(result):
        if int(result.step) >= step:
            raise Crash
    return on_chunk


BACKEND = jax.default_backend()
ON_CPU = BACKEND == "cpu"

requires_cpu = pytest.mark.skipif(
    not ON_CPU, reason=f"the default backend is {BACKEND}: the case measures XLA:CPU itself "
                       "(functional_sgd.tune_cpu() and its compiled kernels)")

RTOL_OFF_CPU = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-10}
"""rtol of two compiled programs that compute the same values in another
shape (a ``jax.vmap`` sweep against one run per rate, a stop rule's loop
against a plain one) on GPU/TPU. There the batched or reshaped program's
matmuls and reductions may take other kernels and summation orders, and
float32 rounding grows with the steps: a seed ensemble of 24 steps was
measured 3.5e-5 apart on an H200 (issue 24); 2e-4 leaves headroom and still
catches a wrong rate or schedule (off by >1%). float64: the same ulps, 1e-10."""


def backend_tolerance(rtol=0.0, atol=0.0, *, dtype=np.float32):
    """``dict(rtol=, atol=)`` for comparing two programs that compute the same
    values in another shape (see :data:`RTOL_OFF_CPU`): the test's own figure
    on CPU, where XLA:CPU runs both with the same kernels (exact, or within
    that figure), and at least :data:`RTOL_OFF_CPU` on other backends."""
    if ON_CPU:
        return {"rtol": rtol, "atol": atol}
    return {"rtol": max(rtol, RTOL_OFF_CPU[np.dtype(dtype)]), "atol": atol}


DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"


def deterministic_backend():
    """Whether two compilations of one program give the same bits: always on
    CPU; on GPU only with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``, which
    turns off autotuning (a kernel picked by timing may differ between
    compilations) and takes deterministic scatters and reductions."""
    return ON_CPU or DETERMINISTIC_GPU_FLAG in os.environ.get("XLA_FLAGS", "")


def cpu_subprocess_env(device_count=None, root=None):
    """The environment for a child Python that must run on CPU wherever the
    tests run: ``JAX_PLATFORMS=cpu`` (on a GPU machine the default backend is
    the GPU, with one device, and two processes on one GPU fail in NCCL with
    "Duplicate GPU detected"), ``device_count`` simulated CPU devices added to
    the parent's ``XLA_FLAGS``, and ``root`` first on ``PYTHONPATH``."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if device_count is not None:
        env["XLA_FLAGS"] = " ".join(filter(None, [
            os.environ.get("XLA_FLAGS"),
            f"--xla_force_host_platform_device_count={device_count}"]))
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root),
                                                          os.environ.get("PYTHONPATH")]))
    return env
