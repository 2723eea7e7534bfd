"""The lesson's pieces: predict, loss, gradient, update, and the facts it states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_sgd as fsgd
from helpers import assert_trees_close


def test_linear_is_x_at_params():
    x = jnp.array([[0.5, 1.0], [-0.25, 1.0], [1.0, 1.0]])
    a = jnp.array([3.0, 2.0])
    assert_trees_close(fsgd.linear(a, x), np.asarray(x) @ np.asarray(a), rtol=1e-6)


def test_linear_names_shapes_that_do_not_multiply():
    with pytest.raises(ValueError, match=r"x of shape \(3, 2\).*params of shape \(3,\)"):
        fsgd.linear(jnp.zeros(3), jnp.zeros((3, 2)))


def test_mse_is_mean_squared_error():
    assert float(fsgd.mse(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 4.0, 0.0]))) == \
        pytest.approx((0 + 4 + 9) / 3)


def test_mse_refuses_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match=r"y_hat has shape \(4,\) but y has shape \(4, 1\)"):
        fsgd.mse(jnp.zeros(4), jnp.zeros((4, 1)))


def test_model_and_loss_run_on_torch_tensors_too():
    torch = pytest.importorskip("torch")
    x = np.array([[0.5, 1.0], [-0.5, 1.0]])
    y = np.array([1.0, 2.0])
    a = np.array([3.0, 2.0])
    expected = float(np.mean((x @ a - y) ** 2))
    got = fsgd.linear_mse(torch.tensor(a), torch.tensor(x), torch.tensor(y))
    assert isinstance(got, torch.Tensor)
    assert float(got) == pytest.approx(expected, rel=1e-15)


def test_lesson_gradient_of_x_squared_at_3_is_6():
    assert float(jax.grad(lambda x: x ** 2)(3.0)) == 6.0


def test_lesson_sum_of_squares_at_3_4_10(x64):
    value, grad = fsgd.gradient(lambda x: (x ** 2).sum(), jnp.array([3.0, 4.0, 10.0]))
    assert float(value) == 125.0
    assert_trees_close(grad, np.array([6.0, 8.0, 20.0]))


@pytest.mark.parametrize("lr", [0.01, 0.1, 0.4, 0.9, 1.1],
                         ids=["too-low", "good", "fast", "bouncing", "diverging"])
def test_descent_on_x_squared_follows_closed_form(x64, lr):
    """x_t = x_0 (1 - 2 lr)^t exactly, up to float64 rounding (1e-12 relative)."""
    steps = 60
    result = fsgd.fit(lambda x: x ** 2, jnp.float64(-1.5), lr=lr, steps=steps,
                      run=fsgd.Run(record_params=True))
    expected = -1.5 * (1 - 2 * lr) ** np.arange(steps + 1)
    assert_trees_close(result.trajectory, expected, rtol=1e-12)
    assert_trees_close(result.losses, expected[:-1] ** 2, rtol=1e-12)
    assert int(result.diverged_at) == -1


def test_sgd_update_over_a_pytree_keeps_dtypes():
    params = {"w": jnp.ones(3, jnp.float32), "b": jnp.ones((), jnp.bfloat16)}
    grads = {"w": jnp.full(3, 2.0, jnp.float32), "b": jnp.ones((), jnp.bfloat16)}
    new = fsgd.sgd_update(params, grads, 0.25)
    assert new["w"].dtype == jnp.float32 and new["b"].dtype == jnp.bfloat16
    assert_trees_close(new, {"w": np.full(3, 0.5), "b": np.float32(0.75)})


def test_lesson_data_matches_the_lesson(x64):
    x, y = fsgd.lesson_data(jax.random.key(0), n=1000, dtype=jnp.float64)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (1000, 2) and y.shape == (1000,)
    assert np.all(x[:, 1] == 1) and np.all(np.abs(x[:, 0]) <= 1)
    noise = y - x @ np.array(fsgd.LESSON_A)
    assert noise.min() >= 0 and noise.max() < 1
    assert abs(noise.mean() - 0.5) < 0.05  # U(0, 1): sd of the mean is 0.009


def test_lesson_data_with_integer_weights_is_float():
    x, y = fsgd.lesson_data(jax.random.key(0), n=5, a=(1, 2, 3))
    assert x.dtype == y.dtype == jnp.float32 and x.shape == (5, 3)
    with pytest.raises(TypeError, match="dtype must be a float dtype"):
        fsgd.lesson_data(jax.random.key(0), n=5, dtype=jnp.int32)
