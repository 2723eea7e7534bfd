"""Shared test helpers: comparing pytrees and counting compilations."""

import contextlib

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np

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
