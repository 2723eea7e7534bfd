"""The learning-rate finder: many whole training runs at once, one per rate.

fastai's ``lr_find`` makes one short run while raising the rate every batch,
so each point of its curve mixes the rate with how far training had got.
Here every rate trains from the same start on the same batches for the same
number of steps (``jax.vmap`` over :func:`fit`, one compiled call), and the
curve is the loss each rate really ends at.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core import fit
from ..core._checks import check_data


class LRSweep(NamedTuple):
    """What :func:`lr_sweep` returns.

    Attributes:
      lrs: the learning rates, ``(k,)``, increasing.
      final_loss: ``(k,)`` loss on all the data at each run's final params;
        ``inf`` where the run diverged.
      losses: ``(k, steps)`` per-step batch losses of every run.
      diverged_at: ``(k,)`` first non-finite step of each run, ``-1`` if none.
      best: index of the lowest ``final_loss`` (``-1`` if every run diverged).
      edge: index of the smallest rate that diverged (``-1`` if none did):
        the edge of divergence.
    """

    lrs: jax.Array
    final_loss: jax.Array
    losses: jax.Array
    diverged_at: jax.Array
    best: jax.Array
    edge: jax.Array


def lr_sweep(loss, params, data=(), *, lrs, steps, batch_size=None, key=None, replace=True):
    """Trains one run per learning rate, all in one compiled call.

    Every run starts at ``params`` and sees the same batches (the same
    ``key``); only ``lr`` differs. Its score is the loss on all of ``data``
    at its final parameters, ``L(p_steps)``, so mini-batch noise in the last
    step does not pick the winner.

    Args:
      loss, params, data, steps, batch_size, key, replace: as for :func:`fit`.
      lrs: increasing learning rates ``> 0``, e.g. ``jnp.logspace(-3, 0.5, 64)``.

    Returns:
      An :class:`LRSweep`.

    >>> import jax, jax.numpy as jnp
    >>> import functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> sweep = fsgd.lr_sweep(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y),
    ...                       lrs=jnp.array([0.01, 0.1, 0.5, 2.0]), steps=100)
    >>> float(sweep.lrs[sweep.best]), float(sweep.lrs[sweep.edge])
    (0.5, 2.0)
    """
    lrs = _check_lrs(lrs)
    data, _ = check_data(data, True)
    # fit checks the rest (steps, batch_size, key, loss) as it is traced.
    return _sweep(lrs, params, data, key, loss=loss, steps=steps, batch_size=batch_size,
                  replace=bool(replace))


@partial(jax.jit, static_argnames=("loss", "steps", "batch_size", "replace"))
def _sweep(lrs, params, data, key, *, loss, steps, batch_size, replace):
    def one_run(lr):
        result = fit(loss, params, data, lr=lr, steps=steps, batch_size=batch_size, key=key,
                     replace=replace)
        return result.losses, result.diverged_at, loss(result.params, *data)

    losses, diverged_at, final = jax.vmap(one_run)(lrs)
    diverged = (diverged_at >= 0) | ~jnp.isfinite(final)
    final = jnp.where(diverged, jnp.inf, final)
    best = jnp.where(diverged.all(), -1, jnp.argmin(final)).astype(jnp.int32)
    edge = jnp.where(diverged.any(), jnp.argmax(diverged), -1).astype(jnp.int32)
    return LRSweep(lrs, final, losses, diverged_at, best, edge)


def _check_lrs(lrs):
    array = np.asarray(lrs)
    if array.ndim != 1 or array.shape[0] < 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            "lrs must be a 1-D float array of at least 2 learning rates, e.g. "
            f"jnp.logspace(-3, 0.5, 64); got {array.dtype} of shape {array.shape}.")
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise ValueError(f"lrs must all be finite and > 0; got min {array.min()}, "
                         f"max {array.max()}.")
    if not (np.diff(array) > 0).all():
        raise ValueError("lrs must be strictly increasing (the edge of divergence is the "
                         "first rate that diverges); sort them first.")
    # device_put moves host arrays without compiling (jnp.asarray stages a jit per shape).
    return lrs if isinstance(lrs, jax.Array) else jax.device_put(array)
