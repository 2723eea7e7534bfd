"""Full-batch data stored transposed: same losses and gradients, any loss.

Tolerances: the transposed matmuls sum in another order, so they differ from
the row-major ones by rounding only: float64 within 1e-12 relative, float32
within 1e-5 absolute on the lesson problem (the agreement tests' bounds).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from functional_sgd import _layout
from helpers import assert_trees_close, max_relative_error

X, Y = fsgd.lesson_data(jax.random.key(0), n=300)
START = jnp.array(fsgd.LESSON_START)


def two_layer(params, x, y):
    """A loss with pytree params that reads x in two matmuls."""
    hidden = jnp.tanh(x @ params["w"])
    return jnp.mean((hidden @ params["v"] + x @ params["a"] - y) ** 2)


def column_of_x(params, x, y):
    """Reads x outside a matmul: must be left as it is."""
    return jnp.mean((x @ params + 0.1 * x[:, 0] - y) ** 2)


def outer(params, x, y):
    """An outer product with x keeps x's free axes in the output: left as it is."""
    return jnp.mean(jnp.einsum("nd,k->ndk", x, params) ** 2) + fsgd.linear_mse(params, x, y)


def test_linear_mse_reads_x_transposed_with_the_same_value_and_gradient(x64):
    x, y = (np.asarray(a, np.float64) for a in (X, Y))
    a = np.asarray(START, np.float64)
    loss, stored = _layout.column_major(fsgd.linear_mse, a, (x, y))
    assert stored[0].shape == x.shape[::-1] and stored[1].shape == y.shape
    got = fsgd.gradient(loss, a, *stored)
    want = fsgd.gradient(fsgd.linear_mse, a, x, y)
    assert max_relative_error(got, want) <= 1e-12


def test_pytree_params_and_two_matmuls(x64):
    keys = jax.random.split(jax.random.key(1), 3)
    x, y = (jnp.asarray(a, jnp.float64) for a in (X, Y))
    params = {"w": jax.random.normal(keys[0], (2, 4), jnp.float64),
              "v": jax.random.normal(keys[1], (4,), jnp.float64),
              "a": jax.random.normal(keys[2], (2,), jnp.float64)}
    loss, stored = _layout.column_major(two_layer, params, (x, y))
    assert stored[0].shape == (2, 300)
    assert max_relative_error(fsgd.gradient(loss, params, *stored),
                              fsgd.gradient(two_layer, params, x, y)) <= 1e-12


@pytest.mark.parametrize("loss", [column_of_x, outer])
def test_other_uses_of_x_keep_its_layout(loss):
    got_loss, stored = _layout.column_major(loss, START, (X, Y))
    assert got_loss is loss and stored[0] is X


@pytest.mark.parametrize("dtype, bound", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_fit_with_the_layout_agrees_with_torch(request, dtype, bound):
    torch = pytest.importorskip("torch")
    import reference
    if dtype == np.float64:
        request.getfixturevalue("x64")
    x, y, a = (np.asarray(v, dtype) for v in (X, Y, START))
    ours = fsgd.fit(fsgd.linear_mse, a, (x, y), lr=0.1, steps=150, fast_path=False)
    params, losses = reference.fit(fsgd.linear_mse, a, (x, y), lr=0.1, steps=150)
    assert ours.params.dtype == dtype
    if dtype == np.float64:
        assert max_relative_error(ours.params, params) <= bound
        assert max_relative_error(ours.losses, losses) <= bound
    else:
        assert_trees_close(ours.params, params, atol=bound)
        assert_trees_close(ours.losses, losses, atol=bound)
    del torch


def test_vmap_over_params_with_the_layout():
    starts = jnp.stack([START, START + 1.0])
    linear = lambda a: fsgd.fit(fsgd.linear_mse, a, (X, Y), lr=0.1, steps=50,
                                fast_path=False).params
    assert_trees_close(jax.vmap(linear)(starts)[1], linear(starts[1]), atol=1e-6)
