"""Step 5 of the lesson, step: move the parameters against the gradient.

Steps 2 to 5 on one batch make one training step, :func:`train_step`.
"""

import jax
import jax.numpy as jnp

from ._gradient import gradient


def sgd_update(params, grads, lr):
    """``p <- p - lr * g`` for every leaf, kept in the leaf's dtype.

    ``lr`` is cast to each parameter's dtype first, as torch's
    ``p.sub_(lr * p.grad)`` computes in the parameter's precision.

    >>> import jax.numpy as jnp
    >>> sgd_update(jnp.array([1.0, 2.0]), jnp.array([10.0, -10.0]), 0.1)
    Array([0., 3.], dtype=float32)
    """
    return jax.tree.map(lambda p, g: p - jnp.asarray(lr, p.dtype) * g, params, grads)


def train_step(loss, optimizer, lr, params, opt_state, batch):
    """Steps 2-5 on one batch: predict, loss, gradient, update.

    Returns ``(loss value, new params, new optimizer state)``; with
    ``optimizer=None`` the update is :func:`sgd_update` with ``lr``, else
    the optax optimizer's.

    >>> import jax.numpy as jnp
    >>> train_step(lambda p: (p ** 2).sum(), None, 0.25, jnp.array([2.0]), None, ())
    (Array(4., dtype=float32), Array([1.], dtype=float32), None)
    """
    value, grads = gradient(loss, params, *batch)
    if optimizer is None:
        return value, sgd_update(params, grads, lr), opt_state
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return value, params, opt_state
