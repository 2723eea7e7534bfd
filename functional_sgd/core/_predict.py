"""Step 2 of the lesson, predict: the model ``y_hat = x @ params``.

Written with operators only (``@``), so the same function runs on JAX
arrays, NumPy arrays and torch tensors: the torch reference trains exactly
the model the JAX loop trains.
"""

from __future__ import annotations

from .._types import Tensor


def linear(params: Tensor, x: Tensor) -> Tensor:
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
