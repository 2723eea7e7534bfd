"""Step 4 of the lesson, gradient: how the loss changes with each parameter."""

import jax


def gradient(loss, params, *batch, has_aux=False):
    """The loss and its gradient with respect to ``params``: ``(L(p), ∇L(p))``.

    With ``has_aux``, ``loss`` returns ``(value, aux)`` and this returns
    ``((value, aux), ∇value)``, as ``jax.value_and_grad`` does.

    >>> import jax.numpy as jnp
    >>> gradient(lambda x: (x ** 2).sum(), jnp.array([3.0, 4.0, 10.0]))
    (Array(125., dtype=float32), Array([ 6.,  8., 20.], dtype=float32))
    """
    return jax.value_and_grad(loss, has_aux=has_aux)(params, *batch)
