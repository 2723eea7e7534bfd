"""A call repeating an earlier call's JAX arrays and options skips the checks
it passed (core/_warm.py): same bits, and every check that could now fail
still runs."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _fit, _warm


@pytest.fixture
def checks_run(monkeypatch):
    """Counts the calls that took the full path (the data checks)."""
    _warm._calls.clear()
    count = [0]
    check_data = _fit._checks.check_data

    def counted(*args, **kwargs):
        count[0] += 1
        return check_data(*args, **kwargs)

    monkeypatch.setattr(_fit._checks, "check_data", counted)
    yield count
    _warm._calls.clear()


def lesson():
    x, y = fsgd.lesson_data(jax.random.key(0))
    return jnp.asarray(fsgd.LESSON_START), jnp.asarray(x), jnp.asarray(y)


def schedule_fit(start, x, y, indices, **kwargs):
    return fsgd.fit(fsgd.linear_mse, start, (x, y), indices=indices, **{"lr": 0.1, **kwargs})


def test_a_repeated_call_skips_the_checks_and_keeps_the_bits(checks_run):
    start, x, y = lesson()
    indices = fsgd.sample_indices(jax.random.key(1), 100, 50, 10, replace=False)
    cold = schedule_fit(start, x, y, indices)
    warm = schedule_fit(start, x, y, indices)
    assert checks_run[0] == 1
    for a, b in zip(cold, warm):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_new_lr_or_new_params_of_the_same_signature_stay_warm(checks_run):
    start, x, y = lesson()
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=20)
    first = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.05, steps=20)
    second = fsgd.fit(fsgd.linear_mse, first.params, (x, y), lr=0.05, steps=20)
    assert checks_run[0] == 1
    _warm._calls.clear()
    cold = fsgd.fit(fsgd.linear_mse, first.params, (x, y), lr=0.05, steps=20)
    np.testing.assert_array_equal(np.asarray(second.params), np.asarray(cold.params))
    np.testing.assert_array_equal(np.asarray(second.losses), np.asarray(cold.losses))


@pytest.mark.parametrize("lr", [-0.1, 0.0, float("nan"), "0.1"])
def test_a_bad_lr_is_refused_on_the_warm_path(checks_run, lr):
    start, x, y = lesson()
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5)
    with pytest.raises((ValueError, TypeError), match="lr"):
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=5)
    assert checks_run[0] == 1


def test_anything_else_new_takes_the_full_path(checks_run):
    start, x, y = lesson()
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5)
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=6)  # another option
    with jax.numpy_dtype_promotion("standard"):  # params of another dtype
        fsgd.fit(fsgd.linear_mse, start.astype(jnp.float16), (x, y), lr=0.1, steps=5)
    fsgd.fit(fsgd.linear_mse, start, (x + 0, y), lr=0.1, steps=5)  # another array
    assert checks_run[0] == 4
    bad = x.at[3, 0].set(jnp.nan)  # new data of the same shape is checked again
    with pytest.raises(ValueError, match="NaN or inf"):
        fsgd.fit(fsgd.linear_mse, start, (bad, y), lr=0.1, steps=5)
    with pytest.raises(TypeError, match="replace"):  # equal to True, but not a bool
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5, batch_size=10,
                 key=jax.random.key(0), replace=1)


def test_numpy_data_is_checked_on_every_call(checks_run):
    start, x, y = lesson()
    x = np.array(x)
    fsgd.fit(fsgd.linear_mse, start, (x, np.asarray(y)), lr=0.1, steps=5)
    x[3, 0] = np.nan  # NumPy arrays can be written to between calls
    with pytest.raises(ValueError, match="NaN or inf"):
        fsgd.fit(fsgd.linear_mse, start, (x, np.asarray(y)), lr=0.1, steps=5)
    assert checks_run[0] == 2


def test_a_remembered_call_keeps_no_array_alive(checks_run):
    start, x, y = lesson()
    x = x + 0  # an array only this test holds
    fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.1, steps=5)
    gone = weakref.ref(x)
    del x
    gc.collect()
    assert gone() is None


def test_a_sweep_under_vmap_of_a_warm_call_matches(checks_run):
    start, x, y = lesson()
    lrs = jnp.array([0.05, 0.1])
    sweep = lambda: jax.vmap(lambda lr: fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr,
                                                 steps=20).params)(lrs)
    cold = sweep()
    warm = sweep()
    assert checks_run[0] == 1  # the lr is a tracer; everything else repeats
    np.testing.assert_array_equal(np.asarray(cold), np.asarray(warm))
    one = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.05, steps=20).params
    np.testing.assert_allclose(np.asarray(warm[0]), np.asarray(one), rtol=1e-6)
