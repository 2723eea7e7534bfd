"""Step 7 of the lesson, stop: after ``steps`` updates, or earlier by a rule.

The rule is pure state updated from each step's loss (as optax's
``reduce_on_plateau`` keeps its patience): :class:`StopRule` says which
tests are on, :class:`~functional_sgd._types.StopState` remembers the best
loss, the steps since it and whether the rule fired. With no test on, the
loop is a ``scan`` of exactly ``steps`` steps; with one, a ``while_loop``
that also ends on a non-finite loss.

>>> import jax.numpy as jnp
>>> rule = StopRule(patience=True)
>>> state = rule.init(jnp.float32)
>>> for value in (3.0, 2.0, 2.5, 2.5):
...     state = rule.update(state, jnp.float32(value), tol=None, patience=2)
>>> int(state.waited), bool(state.stopped)
(2, True)
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._types import StopState
from ..drivers import diverged
from . import _arguments


@dataclasses.dataclass(frozen=True)
class StopRule:
    """Which early stops are on: ``tol`` (a loss at or below it) and
    ``patience`` (that many steps without a new best loss). Their values
    are run-time inputs, so a new value compiles nothing."""

    tol: bool = False
    patience: bool = False

    @property
    def active(self):
        return self.tol or self.patience

    def init(self, dtype):
        """The state before the first step: no best loss yet."""
        return _no_best_loss(dtype)

    def update(self, state, value, *, tol, patience):
        """The state after a step whose loss is ``value``."""
        improved = value < state.best
        best = jnp.where(improved, value, state.best)
        waited = jnp.where(improved, 0, state.waited + 1)
        stopped = ~jnp.isfinite(value)
        if self.tol:  # compared in the loss's dtype, as lr acts in the params'
            stopped |= value <= jnp.asarray(tol, value.dtype)
        if self.patience:
            stopped |= waited >= jnp.asarray(patience, waited.dtype)
        return StopState(best, waited, stopped)


@functools.lru_cache(maxsize=16)
def _no_best_loss(dtype):
    """One start state per dtype (its arrays are never written to)."""
    best = np.array(np.inf, dtype)
    best.flags.writeable = False
    return StopState(best, np.int32(0), np.bool_(False))


def choose(tol, patience):
    """The :class:`StopRule` that ``fit``'s ``tol`` and ``patience`` ask for."""
    if tol is not None and _arguments.is_concrete(tol):
        _arguments.check_real(tol, "tol")
    if patience is not None and _arguments.is_concrete(patience):
        _arguments.check_integer_scalar(patience, "patience", minimum=1, maximum=_arguments.MAX_STEP)
    return _RULES[tol is not None, patience is not None]


_RULES = {(t, p): StopRule(t, p) for t in (False, True) for p in (False, True)}


LONG_RUN = 4096
"""From this many steps, :func:`first_bad` (``diverged_at``) first asks
whether any loss is bad: XLA:CPU reduces many losses to a yes or no faster
than to the first bad index."""


def first_bad(losses, steps_run):
    """Index of the first diverged loss among the steps run, ``-1`` if none:
    a loss that is not finite, or past ``1e15 * max(1, |losses[0]|)``
    (``drivers.diverged``).

    One reduction: the least index ``t`` of a bad step, as ``uint32``, where
    a step that is not bad counts as ``2**32 - 1``, which read back as
    ``int32`` is ``-1``. XLA:CPU runs it as one kernel, where ``argmax`` and
    a select took two (visible on the lesson in batches of 10 under
    ``tune_cpu``). Long runs skip it unless a loss is bad.

    >>> import jax.numpy as jnp
    >>> int(first_bad(jnp.array([1.0, 2.0, jnp.inf, jnp.nan]), None))
    2
    >>> int(first_bad(jnp.array([1.0, 2.0]), None))
    -1
    >>> int(first_bad(jnp.array([2.0, 8.0, 4e15]), None))  # finite, but 2e15 times the first
    2
    """
    bad = diverged(losses, jnp)
    if steps_run is not None:
        bad &= jnp.arange(losses.shape[0], dtype=jnp.int32) < steps_run

    def first():
        index = jnp.arange(losses.shape[0], dtype=jnp.uint32)
        least = jnp.min(jnp.where(bad, index, jnp.uint32(NONE_BAD)))
        return jax.lax.bitcast_convert_type(least, jnp.int32)

    if losses.shape[0] < LONG_RUN:
        return first()
    return jax.lax.cond(bad.any(), first, lambda: jnp.int32(-1))


NONE_BAD = 2**32 - 1
"""``-1`` in ``int32``, as ``uint32``: the most any index can be."""
