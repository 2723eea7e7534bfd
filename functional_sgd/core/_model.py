"""The lesson's model and loss: steps 2 (predict) and 3 (loss).

Both are written with operators only (``@``, ``-``, ``**``, ``.mean()``), so
the same functions run on JAX arrays, NumPy arrays and torch tensors. That is
what lets the torch reference train exactly the loss the JAX loop trains.
"""


def linear(params, x):
    """Predicts ``y_hat = x @ params`` (step 2 of the lesson).

    Args:
      params: weights of shape ``(d,)`` or ``(d, k)``.
      x: inputs of shape ``(..., d)``.

    Returns:
      ``x @ params``, of shape ``(...,)`` or ``(..., k)``.

    Raises:
      ValueError: when the last axis of ``x`` is not the first axis of
        ``params``.

    >>> import jax.numpy as jnp
    >>> linear(jnp.array([3.0, 2.0]), jnp.array([[1.0, 1.0], [0.5, 1.0]]))
    Array([5. , 3.5], dtype=float32)
    """
    x_shape, params_shape = tuple(x.shape), tuple(params.shape)
    if not params_shape or not x_shape or x_shape[-1] != params_shape[0]:
        raise ValueError(
            f"linear: x of shape {x_shape} cannot multiply params of shape "
            f"{params_shape}; params needs shape ({x_shape[-1] if x_shape else 'd'},) "
            f"or ({x_shape[-1] if x_shape else 'd'}, k) to match the last axis of x."
        )
    return x @ params


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
