"""The values that flow through a run: what the loop carries, what it reads,
what it records and what ``fit`` returns.

This module imports nothing of the package's own, so the loop (core) and the
host-side drivers around it (chunks, checkpoints, a mesh) can all use these
types without importing one another.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, Union

if sys.version_info >= (3, 11):
    from typing import Never
else:  # the same bottom type before Python 3.11
    from typing import NoReturn as Never

import jax
import numpy as np

PyTree = Any
"""Any pytree of arrays: an array, a tuple, list or dict of them, an equinox module..."""

ArrayLike = jax.typing.ArrayLike
"""What JAX takes as an array: a JAX or NumPy array, or a Python or NumPy scalar."""

Tensor = Any
"""A JAX, NumPy or torch array: the lesson's model and loss are written with
operators only, so the torch reference trains the very same functions."""

Key = jax.Array
"""A ``jax.random`` key: a typed key (``jax.random.key``) or a ``uint32[2]`` one."""

Scalar = Union[float, int, np.number, jax.Array]
"""A real number: a Python or NumPy scalar, or a 0-d array."""


Moved = Never
"""The type of ``**moved``, the keywords of the older API, each refused with
the name of its new home: no value has it, so a type checker refuses any
keyword a function does not take."""


class StopState(NamedTuple):
    """Step 7's memory: the best loss so far, steps since it, whether the rule fired."""

    best: Any
    waited: Any
    stopped: Any


class Carry(NamedTuple):
    """Everything a step changes, carried from one step to the next.

    A run cut into pieces (chunks, a checkpoint and its resume) hands the
    ``Carry`` of one piece to the next: that is all it needs to continue
    with the same bits.
    """

    params: Any
    opt_state: Any
    step: Any  # global index of the next step: it selects the batch a key draws
    stop: StopState
    state: Any = None  # the model's state (BatchNorm statistics), with fit(model=Model(state=...))
    best: Any = None  # with restore_best: (params, state) of the first best evaluation


class Inputs(NamedTuple):
    """What every step reads and never changes. All of it is traced, so new
    values (a new learning rate, new data of the same shape) reuse the
    compiled loop and ``jax.vmap`` can sweep over any of them."""

    data: tuple[Any, ...]
    lr: Any
    key: Any
    indices: Any  # (steps, batch_size) rows of an explicit schedule; its leading axis is steps
    tol: Any
    patience: Any
    rng: Any = None  # the model's key: step t's loss gets key=fold_in(rng, t)
    eval_data: tuple[Any, ...] = ()  # held-out data: evaluate(params, *eval_data)


class Training(NamedTuple):
    """What a piece of the compiled loop updates from step to step: the
    trainable params (the frozen ones apart), the optimizer's state, the
    model's state and the stop rule's."""

    params: Any
    opt_state: Any
    state: Any
    stop: Any  # a StopState (None inside one step)


class Prepared(NamedTuple):
    """What every piece of one compiled run reads the same way: the loss and
    data as the speed plan prepared them, the frozen params and the global
    index of the piece's first step."""

    loss: Any
    data: Any
    frozen: Any
    start_step: Any


class Started(NamedTuple):
    """A run ready to go: the compile-time ``spec`` (a ``LoopSpec``), the
    ``Carry`` it starts from and the ``Inputs`` it reads."""

    spec: Any
    carry: Carry
    inputs: Inputs


class Record(NamedTuple):
    """What a run of the loop records besides its final ``Carry``."""

    losses: Any       # (steps,), NaN for steps a stop rule skipped
    diverged_at: Any  # first step whose loss diverged (drivers.diverged), -1 if none
    steps_run: Any    # updates made
    trajectory: Any   # params before every step and after the last, or None
    aux: Any = None   # with has_aux: the loss's aux stacked over the steps
    evals: Any = None       # with evaluate: its dict, each value stacked over the evaluations
    eval_steps: Any = None  # with evaluate: the global step after each evaluation, -1 if cut off


class FitResult(NamedTuple):
    """What :func:`fit` returns (a pytree, so it passes through ``jit``/``vmap``).

    Attributes:
      params: the parameters after the last update; with
        ``Evaluation(restore_best=True)``, those of the first best
        evaluation (after ``best_step`` updates).
      losses: ``(steps,)``; ``losses[t]`` is the loss of step ``t``'s batch,
        before that step's update. Steps not run (stop rule) hold NaN.
      diverged_at: first step whose loss diverged, ``-1`` if none: a loss
        that is not finite, or more than ``1e15 * max(1, |losses[0]|)``
        (finite, but grown 1e15-fold: no healthy run does that).
      steps_run: number of updates made (``steps`` unless a stop rule fired).
      step: global step count after the run; ``Run.after(result)`` passes
        it (with ``opt_state``) to continue the run.
      opt_state: the optimizer's state, ``None`` for plain SGD.
      trajectory: with ``Run(record_params=True)``, the params before every step
        and after the last, stacked on a leading axis of ``steps + 1``;
        otherwise ``None``.
      state: with ``Model(state=...)``, the model state after the last step
        (BatchNorm statistics, say); otherwise ``None``.
      aux: with ``Model(has_aux=True)``, the loss's aux of every step,
        stacked on a leading axis of ``steps``: steps a stop rule cut off
        hold NaN (integer and bool leaves: zero/False); otherwise ``None``.
      evals: with an :class:`~functional_sgd.Evaluation`, its dict, each
        value stacked over the evaluations (evaluations a stop rule cut off
        hold NaN), with each period's training means beside it
        (``"train/loss"``, ``"train/<aux key>"``); otherwise ``None``.
      eval_steps: the update count after each evaluation (``-1`` for one
        cut off); otherwise ``None``.
      best_step: with an evaluation's ``monitor``, the update count after
        its first best evaluation (the one ``restore_best`` returns);
        ``-1`` without a monitor or when no evaluation was finite.
    """

    params: PyTree
    losses: jax.Array
    diverged_at: jax.Array
    steps_run: jax.Array
    step: jax.Array
    opt_state: PyTree
    trajectory: PyTree = None
    state: PyTree = None
    aux: PyTree = None
    evals: dict[str, jax.Array] | None = None
    eval_steps: jax.Array | None = None
    best_step: jax.Array | int = -1


def fit_result(carry: Carry, record: Record, best_step: Any = -1) -> FitResult:
    """The :class:`FitResult` of a run that ended in ``carry`` and recorded ``record``."""
    return FitResult(carry.params, record.losses, record.diverged_at, record.steps_run,
                     carry.step, carry.opt_state, record.trajectory, carry.state, record.aux,
                     record.evals, record.eval_steps, best_step)
