"""fit's Python front end: every check still fires, and a warm call does no
per-call tracing (the loss is traced once per signature)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd.core import _data_checks, _trace

X, Y = fsgd.lesson_data(jax.random.key(0))
START = jnp.array(fsgd.LESSON_START)


def counting_loss():
    calls = [0]

    def loss(params, x, y):
        calls[0] += 1
        return fsgd.linear_mse(params, x, y)

    return loss, calls


def test_a_warm_call_traces_the_loss_no_more():
    loss, calls = counting_loss()
    fsgd.fit(loss, START, (X, Y), lr=0.1, steps=5).params.block_until_ready()
    assert calls[0] >= 1  # traced by the check and by the compiled loop
    traced = calls[0]
    x2, y2 = fsgd.lesson_data(jax.random.key(1))
    fsgd.fit(loss, START, (X, Y), lr=0.3, steps=5).params.block_until_ready()
    fsgd.fit(loss, START + 1, (x2, np.asarray(y2)), lr=0.1, steps=5).params.block_until_ready()
    assert calls[0] == traced
    fsgd.fit(loss, START, (X[:50], Y[:50]), lr=0.1, steps=5).params.block_until_ready()
    assert calls[0] > traced  # a new shape is a new signature


def test_a_models_loss_and_evaluate_are_traced_once_per_signature(monkeypatch):
    """A model's loss (here with an aux) and evaluate take the full path on
    every call (a model's call is never remembered whole), but the checks
    trace them once per signature (``_trace``)."""
    traced = []
    trace = _trace._trace
    monkeypatch.setattr(_trace, "_trace", lambda convention, function, *args: traced.append(
        function.__name__) or trace(convention, function, *args))

    def loss(params, x, y):
        return fsgd.linear_mse(params, x, y), {"first": x[0, 0]}

    def evaluate(params, x, y):
        return {"mse": fsgd.linear_mse(params, x, y)}

    def run(x, y):
        evaluation = fsgd.Evaluation(evaluate, (x[:20], y[:20]), every=2)
        fsgd.fit(loss, START, (x, y), lr=0.1, steps=4, model=fsgd.Model(has_aux=True),
                 evaluation=evaluation)
        return sorted(traced)

    assert run(X, Y) == ["evaluate", "loss"]
    x2, y2 = fsgd.lesson_data(jax.random.key(3))
    assert run(x2, y2) == ["evaluate", "loss"]  # new arrays, the same signature
    assert run(X[:50], Y[:50]) == ["evaluate", "loss", "loss"]  # a new shape: the loss's


def test_a_new_dtype_is_a_new_signature(x64):
    loss, calls = counting_loss()
    fsgd.fit(loss, START, (X, Y), lr=0.1, steps=3)
    traced = calls[0]
    x64_data = (np.asarray(X, np.float64), np.asarray(Y, np.float64))
    result = fsgd.fit(loss, np.asarray(START, np.float64), x64_data, lr=0.1, steps=3)
    assert calls[0] > traced and result.params.dtype == jnp.float64


BIG_X, BIG_Y = fsgd.lesson_data(jax.random.key(2), 20_000)


@pytest.fixture(params=["read in place", "on the device"])
def where_checked(request, monkeypatch):
    """CPU arrays are read by NumPy in place; on an accelerator, arrays over
    _HOST_CHECK_BYTES are checked by a compiled call: force that route too."""
    if request.param == "on the device":
        monkeypatch.setattr(_data_checks, "_host_view",
                            lambda a: a if isinstance(a, np.ndarray) else None)
    return request.param


@pytest.mark.parametrize("rows", [100, 20_000], ids=["small", "big"])
@pytest.mark.parametrize("bad", [0, 1, 2])
@pytest.mark.parametrize("kind", ["jax", "numpy", "mixed"])
def test_every_non_finite_array_is_found(bad, kind, rows, where_checked):
    x, y = (X, Y) if rows == 100 else (BIG_X, BIG_Y)
    assert (x.nbytes > _data_checks._HOST_CHECK_BYTES) == (rows > 100)
    arrays = [x, y, y * 2]
    arrays[bad] = arrays[bad].at[(3,) + (0,) * (arrays[bad].ndim - 1)].set(jnp.inf)
    if kind == "numpy":
        arrays = [np.asarray(a) for a in arrays]
    elif kind == "mixed":
        arrays[1] = np.asarray(arrays[1])

    def loss(params, x, y, z):
        return fsgd.linear_mse(params, x, y) + fsgd.mse(y, z)

    with pytest.raises(ValueError, match=rf"data\[{bad}\] contains NaN or inf"):
        fsgd.fit(loss, START, tuple(arrays), lr=0.1, steps=3)


def test_integer_data_is_not_checked_for_finiteness():
    rows = jnp.arange(100, dtype=jnp.int32)
    result = fsgd.fit(lambda p, x, y, i: fsgd.linear_mse(p, x, y), START, (X, Y, rows),
                      lr=0.1, steps=3)
    assert int(result.diverged_at) == -1


def test_checks_run_on_data_closed_over_by_jit():
    """Concrete data inside a jit trace is still checked (and no tracer leaks)."""
    lrs = jnp.array([0.05, 0.1])
    indices = jnp.zeros((5, 2), jnp.int32)

    def sweep(data, **kwargs):
        return jax.jit(jax.vmap(lambda lr: fsgd.fit(fsgd.linear_mse, START, data, lr=lr,
                                                    steps=5, **kwargs).params))(lrs)

    assert sweep((X, Y)).shape == (2, 2)
    assert sweep((X, Y), rows=fsgd.Schedule(indices)).shape == (2, 2)
    with pytest.raises(ValueError, match=r"data\[1\] contains NaN or inf"):
        sweep((X, Y.at[0].set(jnp.nan)))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 100\)"):
        sweep((X, Y), rows=fsgd.Schedule(indices.at[0, 0].set(100)))


@pytest.mark.parametrize("rows", [100, 20_000], ids=["small", "big"])
def test_indices_out_of_range_are_found(rows, where_checked):
    x, y = (X, Y) if rows == 100 else (BIG_X, BIG_Y)
    indices = jnp.zeros((rows, 1), jnp.int32)
    fsgd.fit(fsgd.linear_mse, START, (x, y), lr=0.1, rows=fsgd.Schedule(indices))
    for bad, value in ((0, -1), (rows - 1, rows)):
        with pytest.raises(ValueError, match=rf"indices must lie in \[0, {rows}\)"):
            fsgd.fit(fsgd.linear_mse, START, (x, y), lr=0.1,
                     rows=fsgd.Schedule(indices.at[bad, 0].set(value)))


@pytest.mark.parametrize("where", ["as placed", "as on an accelerator"])
def test_a_jax_array_is_checked_once_and_a_numpy_array_every_call(monkeypatch, where):
    """A JAX array that XLA owns (on an accelerator) never changes, so one
    finite check per array object holds; a NumPy array can be written to
    between calls and is checked again, and so is a JAX array on the CPU (it
    may be a view of NumPy or DLPack memory). "as on an accelerator": JAX
    arrays are neither readable in place by NumPy nor shared with the host,
    as on a GPU, so a large one is checked once, by a compiled call on its
    device."""
    on_accelerator = where == "as on an accelerator"
    if on_accelerator:
        monkeypatch.setattr(_data_checks, "_host_view",
                            lambda a: a if isinstance(a, np.ndarray) else None)
        monkeypatch.setattr(_data_checks, "may_share_host_memory", lambda a: False)
    checked = []
    check = _data_checks._finite_on_host
    monkeypatch.setattr(_data_checks, "_finite_on_host", lambda a: checked.append(a) or check(a))
    # On an accelerator x (160 KB) is checked on its device, not on the host: count both.
    check_on_device = _data_checks._jit_all_finite
    monkeypatch.setattr(_data_checks, "_jit_all_finite",
                        lambda arrays: checked.extend(arrays) or check_on_device(arrays))
    x, y = jnp.array(BIG_X), np.array(BIG_Y)  # fresh objects, never seen before
    fsgd.fit(fsgd.linear_mse, START, (x, y), lr=0.1, steps=2)
    assert len(checked) == 2
    fsgd.fit(fsgd.linear_mse, START, (x, y), lr=0.1, steps=2)
    assert len(checked) == (3 if on_accelerator else 4) and checked[-1] is y
    y[7] = np.nan
    with pytest.raises(ValueError, match=r"data\[1\] contains NaN or inf"):
        fsgd.fit(fsgd.linear_mse, START, (x, y), lr=0.1, steps=2)
    bad_x = x.at[5, 0].set(jnp.inf)  # a new array: checked
    with pytest.raises(ValueError, match=r"data\[0\] contains NaN or inf"):
        fsgd.fit(fsgd.linear_mse, START, (bad_x, np.asarray(BIG_Y)), lr=0.1, steps=2)


def test_index_ranges_are_remembered_for_jax_arrays_only(monkeypatch):
    """As on an accelerator, where a JAX array shares no host memory (on the
    CPU every JAX array is read again: it may be a view of NumPy memory)."""
    monkeypatch.setattr(_data_checks, "may_share_host_memory", lambda a: False)
    read = []
    view = _data_checks._host_view
    monkeypatch.setattr(_data_checks, "_host_view", lambda a: read.append(a) or view(a))
    on_device = jnp.zeros((7, 3), jnp.int32)
    on_host = np.zeros((7, 3), np.int32)
    for indices in (on_device, on_device, on_host, on_host):
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, rows=fsgd.Schedule(indices))
    read = [a is on_device for a in read if a is on_device or a is on_host]  # not the data
    assert read == [True, False, False]
    on_host[2, 1] = 100  # written in place: found on the next call
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 100\)"):
        fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, rows=fsgd.Schedule(on_host))
