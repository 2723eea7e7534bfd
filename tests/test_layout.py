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
from functional_sgd.speed import SpeedPlan, _layout
from helpers import assert_trees_close, max_relative_error, backend_tolerance

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
    assert stored[0] is X and stored[1] is Y  # replayed for its sums only
    assert float(got_loss(START, *stored)) == pytest.approx(float(loss(START, X, Y)),
                                                            rel=1e-6)


@pytest.mark.parametrize("dtype, bound", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_fit_with_the_layout_agrees_with_torch(request, dtype, bound):
    torch = pytest.importorskip("torch")
    import reference
    if dtype == np.float64:
        request.getfixturevalue("x64")
    x, y, a = (np.asarray(v, dtype) for v in (X, Y, START))
    ours = fsgd.fit(fsgd.linear_mse, a, (x, y), lr=0.1, steps=150, run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=False)))
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
                                run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=False))).params
    assert_trees_close(jax.vmap(linear)(starts)[1], linear(starts[1]), **backend_tolerance(atol=1e-6))


def sum_kinds(params, x, y):
    """Sums the replay may take as a dot (a float vector) and ones it must not."""
    r = x @ params - y
    rows = jnp.arange(r.shape[0])
    return (r ** 2).sum() + 1e-3 * (x ** 2).sum() + 1e-6 * rows.sum().astype(r.dtype) + jnp.abs(r).mean()


def test_only_whole_short_float_vectors_are_summed_as_dots():
    closed = jax.make_jaxpr(sum_kinds)(START, X, Y)
    sums = [eqn for eqn in closed.jaxpr.eqns if eqn.primitive.name == "reduce_sum"]
    seen = [(tuple(eqn.invars[0].aval.shape), str(eqn.invars[0].aval.dtype),
             _layout._sum_by_dot_applies(eqn)) for eqn in sums]
    assert seen == [((300,), "float32", True),    # (r ** 2).sum()
                    ((300, 2), "float32", False),  # (x ** 2).sum(): not a vector
                    ((300,), "int32", False),      # rows.sum(): not floats
                    ((300,), "float32", True)]     # jnp.abs(r).mean()
    long = jax.make_jaxpr(lambda v: v.sum())(jnp.ones(_layout.MAX_SUM_BY_DOT + 1))
    assert not _layout._sum_by_dot_applies(long.jaxpr.eqns[0])


@pytest.mark.parametrize("loss", [fsgd.linear_mse, sum_kinds])
def test_sums_as_dots_keep_values_close_and_gradients_exact(loss, x64):
    """float64: the dot sums in another order (1e-12 relative); the gradient
    of a sum is a broadcast either way, so it keeps its bits."""
    x, y = (np.asarray(a, np.float64) for a in (X, Y))
    a = np.asarray(START, np.float64)
    replayed, stored = _layout.column_major(loss, a, (x, y))
    value, grad = jax.value_and_grad(replayed)(a, *stored)
    expected_value, expected_grad = jax.value_and_grad(loss)(a, x, y)
    assert max_relative_error(value, expected_value) <= 1e-12
    assert_trees_close(grad, expected_grad, rtol=1e-12)


def test_sums_as_dots_leave_fit_params_bit_identical():
    """float32 lesson, and a sweep over learning rates: params keep their bits
    (only the reported losses may move in their last bits)."""
    def run(plan):
        one = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=50, run=fsgd.Run(speed=plan))
        sweep = jax.jit(jax.vmap(lambda lr: fsgd.fit(
            fsgd.linear_mse, START, (X, Y), lr=lr, steps=50, run=fsgd.Run(speed=plan))))(
                jnp.array([0.01, 0.1]))
        return one, sweep

    as_dots, as_sums = run(SpeedPlan()), run(SpeedPlan(sums_as_dots=False))
    for dots, sums in zip(as_dots, as_sums):
        assert_trees_close(dots.params, sums.params, rtol=0, atol=0)
        assert_trees_close(dots.losses, sums.losses, rtol=1e-6)


def test_the_plan_switches_the_layout_off_with_the_same_params():
    plain = SpeedPlan(column_major=False, sums_as_dots=False)
    for plan in (SpeedPlan(), SpeedPlan(sums_as_dots=False), plain):
        result = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=50, run=fsgd.Run(speed=plan))
        reference = fsgd.fit(fsgd.linear_mse, START, (X, Y), lr=0.1, steps=50, run=fsgd.Run(speed=plain))
        assert_trees_close(result.params, reference.params, rtol=1e-6)
