"""Step 4 of the lesson, gradient: how the loss changes with each parameter."""

from __future__ import annotations

from typing import Any, Callable

import jax

from .._types import PyTree


def gradient(loss: Callable[..., Any], params: PyTree, *batch: Any,
             has_aux: bool = False) -> tuple[Any, PyTree]:
    """The loss and its gradient with respect to ``params``: ``(L(p), ∇L(p))``.

    With ``has_aux``, ``loss`` returns ``(value, aux)`` and this returns
    ``((value, aux), ∇value)``, as ``jax.value_and_grad`` does.

    Args:
      loss: ``loss(params, *batch) -> scalar`` (or ``(scalar, aux)``).
      params: the point, any pytree of float arrays.
      batch: the loss's other arguments.
      has_aux: ``loss`` returns ``(value, aux)``.

    Returns:
      ``(value, grad)``, ``grad`` with the structure of ``params``.

    >>> import jax.numpy as jnp
    >>> gradient(lambda x: (x ** 2).sum(), jnp.array([3.0, 4.0, 10.0]))
    (Array(125., dtype=float32), Array([ 6.,  8., 20.], dtype=float32))
    """
    return jax.value_and_grad(loss, has_aux=has_aux)(params, *batch)
