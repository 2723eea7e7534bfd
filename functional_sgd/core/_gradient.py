"""Step 4 of the lesson, gradient: how the loss changes with each parameter."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from .._types import PyTree


def gradient(loss: Callable[..., Any], params: PyTree, *batch: Any,
             has_aux: bool = False) -> tuple[Any, PyTree]:
    """The loss and its gradient with respect to ``params``: ``(L(p), ∇L(p))``.

    With ``has_aux``, ``loss`` returns ``(value, aux)`` and this returns
    ``((value, aux), ∇value)``, as ``jax.value_and_grad`` does.

    For a complex leaf ``z`` the gradient is the conjugate of ``jax.grad``'s,
    ``∂L/∂Re z + i ∂L/∂Im z``: the direction of steepest ascent of a real
    loss, which ``z <- z - lr * g`` descends, as torch's ``z.grad`` and optax
    (whose docs ask for the conjugate) take it. ``jax.grad`` alone would
    ascend in the imaginary part.

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
    >>> gradient(lambda z: jnp.abs(z) ** 2, jnp.array(1 + 2j, jnp.complex64))[1]
    Array(2.+4.j, dtype=complex64)
    """
    value, grads = jax.value_and_grad(loss, has_aux=has_aux)(params, *batch)
    return value, jax.tree.map(_descent_direction, grads)


def _descent_direction(g):
    return jnp.conj(g) if jnp.iscomplexobj(g) else g
