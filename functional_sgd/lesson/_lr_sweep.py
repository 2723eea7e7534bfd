"""The learning-rate finder: many whole training runs at once, one per rate.

fastai's ``lr_find`` makes one short run while raising the rate every batch,
so each point of its curve mixes the rate with how far training had got.
Here every rate trains from the same start on the same batches for the same
number of steps (``jax.vmap`` over :func:`fit`, one compiled call), and the
curve is the loss each rate really ends at. With held-out data, every run
also evaluates it inside the same compiled call (``fit(evaluate=...)``), so
the curve can show the validation loss each rate reaches, and how it went.
"""

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core import fit
from ..core._checks import check_data, check_indices, check_outputs_fit, holds_host_arrays
from ..core._evaluate import check_eval_data, given_data
from ..core._model import torch_as_arrays


class LRSweep(NamedTuple):
    """What :func:`lr_sweep` returns.

    Attributes:
      lrs: the learning rates, ``(k,)``, increasing.
      final_loss: ``(k,)`` loss on all the data at each run's final params;
        ``inf`` where the run diverged.
      losses: ``(k, steps)`` per-step batch losses of every run.
      diverged_at: ``(k,)`` first diverged step of each run (see
        ``FitResult.diverged_at``), ``-1`` if none.
      best: index of the lowest ``final_loss`` (``-1`` if every run diverged).
      edge: index of the smallest rate that diverged (``-1`` if none did):
        the edge of divergence.
      evals: with held-out data, ``evaluate``'s dict (by default
        ``{"loss": loss on eval_data}``), each value ``(k, evaluations)``:
        one validation curve per rate; otherwise ``None``.
      eval_steps: ``(k, evaluations)`` step counts of those evaluations.
    """

    lrs: jax.Array
    final_loss: jax.Array
    losses: jax.Array
    diverged_at: jax.Array
    best: jax.Array
    edge: jax.Array
    evals: Any = None
    eval_steps: Any = None


@dataclasses.dataclass(frozen=True)
class HeldOutLoss:
    """``evaluate`` by default: the training loss on the held-out data, as
    ``{"loss": loss(params, *eval_data)}`` (frozen, so equal ones share a compile)."""

    loss: Callable

    def __call__(self, params, *eval_data):
        return {"loss": self.loss(params, *eval_data)}


def lr_sweep(loss, params, data=(), *, lrs, steps=None, batch_size=None, key=None,
             replace=True, indices=None, optimizer=None, evaluate=None, eval_data=(),
             eval_every=None):
    """Trains one run per learning rate, all in one compiled call.

    Every run starts at ``params`` and sees the same batches (the same
    ``key``, or ``indices``); only ``lr`` differs. Its score is the loss on
    all of ``data`` at its final parameters, ``L(p_steps)``, so mini-batch
    noise in the last step does not pick the winner.

    Args:
      loss, params, data, steps, batch_size, key, replace, indices: as for
        :func:`fit` (with a NumPy array among the inputs, the sweep returns
        once it has run, as ``fit`` does).
      lrs: increasing learning rates ``> 0``, e.g. ``jnp.logspace(-3, 0.5, 64)``.
      optimizer: an optax optimizer made with ``optax.inject_hyperparams``
        (e.g. ``optax.inject_hyperparams(optax.adam)(learning_rate=0.1)``):
        each run sets its ``learning_rate`` in the optimizer's state, so the
        rates share one compile. ``None``: plain SGD. A ``learning_rate``
        that is a schedule is refused (it would overwrite the swept rate at
        every update); to sweep a schedule's peak, inject a constant rate and
        chain ``optax.scale_by_schedule(shape)`` with ``shape`` peaking at 1.
      evaluate, eval_data, eval_every: as for :func:`fit`; with ``eval_data``
        and no ``evaluate``, the loss on the held-out data is evaluated.

    Returns:
      An :class:`LRSweep`.

    >>> import jax, jax.numpy as jnp
    >>> import functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> sweep = fsgd.lr_sweep(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y),
    ...                       lrs=jnp.array([0.01, 0.1, 0.5, 2.0]), steps=100)
    >>> float(sweep.lrs[sweep.best]), float(sweep.lrs[sweep.edge])
    (0.5, 2.0)
    >>> held_out = fsgd.lesson_data(jax.random.key(1))
    >>> sweep = fsgd.lr_sweep(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y),
    ...                       lrs=jnp.array([0.01, 0.5]), steps=100, eval_data=held_out,
    ...                       eval_every=50)
    >>> sweep.evals["loss"].shape, sweep.eval_steps[0].tolist()
    ((2, 2), [50, 100])
    """
    lrs = _check_lrs(lrs)
    params = torch_as_arrays(params)  # as fit takes them; jit would refuse a tensor
    data, n = check_data(data, True)
    if indices is not None:
        check_indices(indices, n)
    if optimizer is not None:
        _check_injected(optimizer, params)
    if evaluate is None and given_data(eval_data):
        evaluate = HeldOutLoss(loss)
    # fit checks the rest (steps, batch_size, key, loss, evaluate) as it is traced.
    arguments = (lrs, params, data, key, indices, check_eval_data(eval_data, True))
    options = {"loss": loss, "steps": steps, "batch_size": batch_size, "replace": bool(replace),
               "optimizer": optimizer, "evaluate": evaluate, "eval_every": eval_every}
    # The sweep's outputs, from its trace (which the call then reuses).
    check_outputs_fit([(f"{len(lrs)} runs' losses and evaluations",
                        _sweep.eval_shape(*arguments, **options),
                        ("Sweep fewer rates, or fewer steps, a call (split lrs: one "
                         "lr_sweep each part)."))])
    sweep = _sweep(*arguments, **options)
    if holds_host_arrays((params, data, indices, arguments[-1])):
        jax.block_until_ready(sweep)  # as fit: JAX may read NumPy inputs in place
    return sweep


@partial(jax.jit, static_argnames=("loss", "steps", "batch_size", "replace", "optimizer",
                                   "evaluate", "eval_every"))
def _sweep(lrs, params, data, key, indices, eval_data, *, loss, steps, batch_size, replace,
           optimizer, evaluate, eval_every):
    def one_run(lr):
        rate = {"lr": lr} if optimizer is None else {
            "optimizer": optimizer, "opt_state": _with_rate(optimizer.init(params), lr)}
        held_out = {} if evaluate is None else {
            "evaluate": evaluate, "eval_data": eval_data, "eval_every": eval_every}
        result = fit(loss, params, data, steps=steps, batch_size=batch_size, key=key,
                     replace=replace, indices=indices, **rate, **held_out)
        return (result.losses, result.diverged_at, loss(result.params, *data), result.evals,
                result.eval_steps)

    losses, diverged_at, final, evals, eval_steps = jax.vmap(one_run)(lrs)
    diverged = (diverged_at >= 0) | ~jnp.isfinite(final)
    final = jnp.where(diverged, jnp.inf, final)
    best = jnp.where(diverged.all(), -1, jnp.argmin(final)).astype(jnp.int32)
    edge = jnp.where(diverged.any(), jnp.argmax(diverged), -1).astype(jnp.int32)
    return LRSweep(lrs, final, losses, diverged_at, best, edge, evals, eval_steps)


def _with_rate(opt_state, lr):
    """An ``inject_hyperparams`` state with its learning rate set to ``lr``."""
    rates = dict(opt_state.hyperparams)
    rates["learning_rate"] = jnp.asarray(lr, jnp.result_type(rates["learning_rate"]))
    return opt_state._replace(hyperparams=rates)


def _check_injected(optimizer, params):
    """The optimizer must keep its learning rate in its state (``inject_hyperparams``)."""
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError("optimizer must be an optax GradientTransformation; got "
                        f"{type(optimizer).__name__}.")
    state = jax.eval_shape(optimizer.init, params)
    if "learning_rate" not in getattr(state, "hyperparams", {}):
        raise ValueError(
            "optimizer must keep its learning rate in its state, so every rate of the sweep "
            "shares one compile: build it with optax.inject_hyperparams, e.g. "
            "optax.inject_hyperparams(optax.adam)(learning_rate=0.1).")
    # A scheduled rate is recomputed from the step count at every update,
    # over whatever rate the sweep set: every run would train alike.
    if "learning_rate" in getattr(state, "hyperparams_states", {}):
        raise ValueError(
            "optimizer's learning_rate is a schedule, which sets the rate at every update "
            "from the step count, so the sweep cannot set it: every rate of lrs would train "
            "alike. Sweep the schedule's peak instead: give inject_hyperparams a constant "
            "rate and the schedule's shape (peak 1) as a scale, e.g. "
            "optax.inject_hyperparams(lambda learning_rate: optax.chain(optax.sgd("
            "learning_rate), optax.scale_by_schedule(shape)))(learning_rate=0.1), where "
            "shape = optax.linear_schedule(1.0, 0.1, steps); lrs then are the peaks.")


def _check_lrs(lrs):
    if callable(lrs):
        raise TypeError(
            f"lrs must be an array of constant learning rates; got a callable {lrs!r}, a "
            "schedule step -> rate. A sweep runs each rate as a constant: pass "
            "lrs=jnp.logspace(-3, 0.5, 64), and give the chosen rate's schedule to fit(lr=...).")
    array = np.asarray(lrs)
    if array.ndim != 1 or array.shape[0] < 2 or not jnp.issubdtype(array.dtype, jnp.floating):
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
