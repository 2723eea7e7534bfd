"""Step 5 of the lesson, step: move the parameters against the gradient.

Steps 2 to 5 on one batch make one training step: :func:`train_step` for
the lesson's ``loss(params, *batch) -> scalar``, :func:`model_step` for a
user's own model (frozen leaves, a key, a state, an aux output; see
``_model``), of which ``train_step`` is the plain case.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._types import ArrayLike, PyTree, Training
from ._gradient import gradient
from ._model import PLAIN, takes_extra_args


def sgd_update(params: PyTree, grads: PyTree, lr: ArrayLike) -> PyTree:
    """``p <- p - lr * g`` for every leaf, kept in the leaf's dtype.

    ``lr`` is cast to each parameter's dtype first, as torch's
    ``p.sub_(lr * p.grad)`` computes in the parameter's precision.

    Args:
      params: the parameters, any pytree of arrays.
      grads: their gradient, of the same structure.
      lr: the learning rate.

    Returns:
      The updated parameters.

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
    out = model_step(Stepper(PLAIN, loss, optimizer), lr,
                     Training(params, opt_state, None, None), batch, None)
    return out.value, out.params, out.opt_state


class Stepper(NamedTuple):
    """What every step of a run does the same way."""

    model: Any  # how the loss is called and which leaves train (``_model.Model``)
    loss: Any
    optimizer: Any = None  # an optax optimizer, or None for ``p <- p - lr * g``
    frozen: Any = None  # the frozen leaves of params (``Model.split``)


class Stepped(NamedTuple):
    """What :func:`model_step` returns."""

    value: Any      # the batch's loss before the update
    params: Any     # the trainable params after it
    opt_state: Any
    state: Any      # the model's new state (None without one)
    aux: Any        # the loss's aux output (None without one)


def model_step(stepper, lr, training, batch, key):
    """One step of a user's model: the gradient with respect to the
    trainable params of ``training`` only (``stepper.frozen`` holds the
    rest, see ``Model.split``), the loss called as ``stepper.model`` says,
    with the model's state of ``training`` and ``key``.

    An optax optimizer that takes extra arguments
    (``GradientTransformationExtraArgs``: ``reduce_on_plateau``, ``lbfgs``,
    ``polyak_sgd``) gets ``value=``, ``grad=`` and ``value_fn=``, the batch's
    loss as a function of the trainable params (with this step's key and
    state), on every update.
    """
    model, loss, optimizer, frozen = stepper
    params, opt_state, state = training.params, training.opt_state, training.state
    if model.plain:
        value_fn = lambda p: loss(p, *batch)  # noqa: E731
        value, grads = gradient(loss, params, *batch)
        new_state = aux = None
    else:
        def batch_loss(p):
            value, new_state, aux = model.call(loss, model.join(p, frozen), state, key, batch)
            return value, (new_state, aux)

        value_fn = lambda p: batch_loss(p)[0]  # noqa: E731
        (value, (new_state, aux)), grads = gradient(batch_loss, params, has_aux=True)
    if optimizer is None:
        return Stepped(value, sgd_update(params, grads, lr), opt_state, new_state, aux)
    extra = dict(value=value, grad=grads, value_fn=value_fn) \
        if takes_extra_args(type(optimizer)) else {}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return Stepped(value, params, opt_state, new_state, aux)
