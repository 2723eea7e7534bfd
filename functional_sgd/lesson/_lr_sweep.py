"""The learning-rate finder: many whole training runs at once, one per rate.

fastai's ``lr_find`` makes one short run while raising the rate every batch,
so each point of its curve mixes the rate with how far training had got.
Here every rate trains from the same start on the same batches for the same
number of steps (``jax.vmap`` over :func:`fit`, one compiled call), and the
curve is the loss each rate really ends at. With held-out data, every run
also evaluates it inside the same compiled call (``fit(evaluation=Evaluation(...))``), so
the curve can show the validation loss each rate reaches, and how it went.
"""

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Moved
from ..core import Evaluation, Run, Sampled, Schedule, Shuffled, Trainer
from ..core._data_checks import check_data, check_eval_data, check_indices, holds_host_arrays
from ..core._output_size import check_outputs_fit
from ..core._options import Spec
from ..core._trainer import check_spec, hides_moved, refuse_moved
from ..core._model import torch_as_arrays


class LRSweep(NamedTuple):
    """What :func:`lr_sweep` returns.

    Attributes:
      lrs: the learning rates, ``(k,)``, increasing.
      final_loss: ``(k,)`` loss on all the data at the params each run
        returns, ``fit``'s ``result.params``: those of the last step, or
        with ``Evaluation(restore_best=True)`` those of its first best
        evaluation; ``inf`` where the run diverged (even if the params
        restored are from before).
      losses: ``(k, steps)`` per-step batch losses of every run.
      diverged_at: ``(k,)`` first diverged step of each run (see
        ``FitResult.diverged_at``), ``-1`` if none.
      best: index of the lowest ``final_loss`` (``-1`` if every run diverged).
      edge: index of the smallest rate that diverged (``-1`` if none did):
        the edge of divergence.
      evals: with held-out data, ``evaluate``'s dict (by default
        ``{"loss": ...}`` on the held-out data), each value ``(k, evaluations)``:
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


@hides_moved
def lr_sweep(loss: Callable[..., Any], params: Any, data: Any = (), *, lrs: Any,
             steps: int | None = None, epochs: int | None = None,
             batch_size: int | None = None, key: jax.Array | None = None,
             rows: Sampled | Shuffled | Schedule | None = None, optimizer: Any = None,
             evaluation: Evaluation | None = None, **moved: Moved) -> LRSweep:
    """Trains one run per learning rate, all in one compiled call.

    Every run starts at ``params`` and sees the same batches (the same
    ``key``, or schedule); only ``lr`` differs. Its score is the loss on
    all of ``data`` at its final parameters, ``L(p_steps)``, so mini-batch
    noise in the last step does not pick the winner (with
    ``Evaluation(restore_best=True)``: at the params it restores, as
    ``fit`` returns them).

    Args:
      loss: as for :func:`~functional_sgd.fit`.
      params: the start of every run.
      data: as for :func:`~functional_sgd.fit` (arrays in memory; with a
        NumPy array among the inputs, the sweep returns once it has run, as
        ``fit`` does).
      lrs: increasing learning rates ``> 0``, e.g. ``jnp.logspace(-3, 0.5, 64)``.
      steps: updates per run (or ``epochs``).
      epochs: passes over the data per run, instead of ``steps``.
      batch_size: rows per step; ``None`` for all.
      key: the key that draws the batches (the same for every run).
      rows: which rows each step sees, as for :func:`~functional_sgd.fit`.
      optimizer: an optax optimizer made with ``optax.inject_hyperparams``
        (e.g. ``optax.inject_hyperparams(optax.adam)(learning_rate=0.1)``):
        each run sets its ``learning_rate`` in the optimizer's state, so the
        rates share one compile. ``None``: plain SGD. A ``learning_rate``
        that is a schedule is refused (it would overwrite the swept rate at
        every update); to sweep a schedule's peak, inject a constant rate and
        chain ``optax.scale_by_schedule(shape)`` with ``shape`` peaking at 1.
      evaluation: an :class:`~functional_sgd.Evaluation` run inside every
        run; ``Evaluation(data=held_out)`` evaluates the loss on the
        held-out data, one validation curve per rate.

    Returns:
      An :class:`LRSweep`.

    >>> import jax, jax.numpy as jnp
    >>> import functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> sweep = fsgd.lr_sweep(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y),
    ...                       lrs=jnp.array([0.01, 0.1, 0.5, 2.0]), steps=100)
    >>> float(sweep.lrs[sweep.best]), float(sweep.lrs[sweep.edge])
    (0.5, 2.0)
    >>> held_out = fsgd.Evaluation(data=fsgd.lesson_data(jax.random.key(1)), every=50)
    >>> sweep = fsgd.lr_sweep(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y),
    ...                       lrs=jnp.array([0.01, 0.5]), steps=100, evaluation=held_out)
    >>> sweep.evals["loss"].shape, sweep.eval_steps[0].tolist()
    ((2, 2), [50, 100])
    """
    if moved:
        refuse_moved("lr_sweep", moved)
    lrs = _check_lrs(lrs)
    params = torch_as_arrays(params)  # as fit takes them; jit would refuse a tensor
    data, n = check_data(data, True)
    check_spec(Spec(loss, optimizer, steps, epochs, batch_size, rows, None, evaluation))
    indices = None
    if isinstance(rows, Schedule):
        indices = rows.indices
        check_indices(indices, n, drop_last=not rows.padded)
    if optimizer is not None:
        _check_injected(optimizer, params)
    eval_data, limits = (), (None, None)
    if evaluation is not None:
        eval_data = check_eval_data(evaluation.data, True)
        limits = (evaluation.patience, evaluation.tol)  # traced, as fit traces them
    # fit checks the rest (steps, batch_size, key, loss, evaluate) as it is traced.
    arguments = (lrs, params, data, key, _OptionArrays(indices, eval_data, limits),
                 _Traceable(loss, optimizer, steps, epochs, batch_size, rows, evaluation))
    # The sweep's outputs, from its trace (which the call then reuses).
    check_outputs_fit([(f"{len(lrs)} runs' losses and evaluations",
                        _sweep.eval_shape(*arguments),
                        ("Sweep fewer rates, or fewer steps, a call (split lrs: one "
                         "lr_sweep each part)."))])
    sweep = _sweep(*arguments)
    if holds_host_arrays((params, data, indices, eval_data)):
        jax.block_until_ready(sweep)  # as fit: JAX may read NumPy inputs in place
    return sweep


class _OptionArrays(NamedTuple):
    """The arrays a sweep's option values hold, passed traced."""

    indices: Any  # a Schedule's rows, or None
    eval_data: tuple[Any, ...]  # the held-out arrays
    limits: tuple[Any, Any]  # the evaluation's (patience, tol)


class _Traceable(NamedTuple):
    """A sweep's options as a static argument of ``jax.jit``: each option
    value with its arrays taken out (they are traced arguments)."""

    loss: Callable
    optimizer: Any
    steps: Any
    epochs: Any
    batch_size: Any
    rows: Any
    evaluation: Any

    def key(self):
        return (self.loss, self.optimizer, self.steps, self.epochs, self.batch_size,
                _static(self.rows), _static(self.evaluation))

    def __hash__(self):
        return hash(self.key())

    def __eq__(self, other):
        return isinstance(other, _Traceable) and self.key() == other.key()

    def spec(self, arrays):
        """The trainer's ``Spec``, its option values holding the traced ``arrays``."""
        indices, eval_data, limits = arrays
        rows, evaluation = self.rows, self.evaluation
        if isinstance(rows, Schedule):
            rows = dataclasses.replace(rows, indices=indices)
        if evaluation is not None:  # its key holds only whether patience and tol are given
            patience, tol = limits
            evaluation = dataclasses.replace(evaluation, data=eval_data, patience=patience,
                                             tol=tol)
        return Spec(self.loss, self.optimizer, self.steps, self.epochs, self.batch_size,
                    rows, None, evaluation)


_TRACED = frozenset({"indices", "data", "patience", "tol"})
"""Fields of the option values that the sweep passes as traced arguments."""


def _static(value):
    """What of an option value shapes the compiled sweep: every field but the
    traced ones (only whether those are given), so no field is listed by hand."""
    if value is None:
        return None
    return (type(value), *((f.name, (getattr(value, f.name) is not None) if f.name in _TRACED
                            else getattr(value, f.name)) for f in dataclasses.fields(value)))


@partial(jax.jit, static_argnames=("options",))
def _sweep(lrs, params, data, key, arrays, options):
    trainer_spec = options.spec(arrays)
    loss = options.loss

    def one_run(lr):
        if options.optimizer is None:
            spec, rate = trainer_spec, lr
        else:
            spec = trainer_spec._replace(run=Run(opt_state=_with_rate(
                options.optimizer.init(params), lr)))
            rate = None
        trainer = Trainer(spec.loss, **{name: getattr(spec, name) for name in spec._fields[1:]})
        result = trainer(params, data, lr=rate, key=key)
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
