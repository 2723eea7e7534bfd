"""Step 3 of the lesson, loss: how wrong the predictions are.

Written with operators only (``-``, ``**``, ``.mean()``), so the same
functions run on JAX arrays, NumPy arrays and torch tensors.
"""

from ._predict import linear


def mse(y_hat, y):
    """Mean squared error ``mean((y_hat - y)**2)`` (step 3 of the lesson).

    The shapes must be equal: ``(n,)`` against ``(n, 1)`` would otherwise
    broadcast to ``(n, n)`` and give a wrong loss without a word.

    >>> import jax.numpy as jnp
    >>> mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))
    Array(2., dtype=float32)
    """
    if tuple(y_hat.shape) != tuple(y.shape):
        raise ValueError(
            f"mse: y_hat has shape {tuple(y_hat.shape)} but y has shape "
            f"{tuple(y.shape)}; they must be equal (reshape one of them, e.g. "
            "y.reshape(-1), instead of relying on broadcasting)."
        )
    return ((y_hat - y) ** 2).mean()


def linear_mse(params, x, y):
    """The lesson's objective ``mse(linear(params, x), y)``, as ``fit`` wants it.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 1.0], [0.5, 1.0]])
    >>> linear_mse(jnp.array([3.0, 2.0]), x, jnp.array([5.0, 3.5]))
    Array(0., dtype=float32)
    """
    return mse(linear(params, x), y)
