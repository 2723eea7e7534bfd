"""Step 7 as the lesson says it: "keep training until the accuracy of the
model started getting worse". Held-out data is evaluated inside the
compiled loop, and a stop rule may watch what it says.

``fit(..., evaluate=fn, eval_data=(...), eval_every=k)`` runs
``fn(params, *eval_data) -> dict of scalars`` after every ``k``-th update
and after the last one. An :class:`Evaluation` (part of the loop's
compile-time spec) says how; the loop (``_repeat``) runs periods of ``k``
steps, each ending in an evaluation.

With ``monitor="key"`` the stop rule (``tol``, ``patience``) watches that
value of the evaluations instead of the training loss: ``patience`` counts
evaluations without a strictly better value (a tie does not improve, as in
Keras), in ``mode`` ``"min"`` or ``"max"``. The rule works on the signed
value ``s = v`` (min) or ``s = -v`` (max), so "better" is always "lower".

>>> ev = Evaluation(evaluate=None, every=4)
>>> ev.count(10), [ev.end(p, 10) for p in range(ev.count(10))]
(3, [4, 8, 10])
>>> chunk = ev.part(6, at_end=False)  # steps 6.. of the run, not its end
>>> chunk.count(3), chunk.end(0, 3)
(1, 2)
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._types import StopState
from . import _checks
from ._model import unwrap

MODES = ("min", "max")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run evaluates held-out data (compile-time).

    Attributes:
      evaluate: ``evaluate(params, *eval_data) -> dict of scalars`` (with a
        model state: ``evaluate(params, state, *eval_data)``).
      every: updates between evaluations.
      monitor: the key of ``evaluate``'s dict the stop rule watches, or ``None``.
      mode: ``"min"`` or ``"max"``: which way the monitored value improves.
      restore_best: the run returns the params (and state) of the first
        best evaluation.
      offset: updates of the current period made before this piece of the
        run (a chunk, a resumed run): ``(piece start - run start) % every``.
      at_end: this piece ends the run, so it evaluates after its last update.
    """

    evaluate: Callable
    every: int
    monitor: Any = None
    mode: str = "min"
    restore_best: bool = False
    offset: int = 0
    at_end: bool = True

    def _first(self):
        """Updates of this piece before its first period ends."""
        return self.every - self.offset

    def _regular(self, steps):
        """Periods that end within a piece of ``steps`` updates."""
        first = self._first()
        return 0 if first > steps else (steps - first) // self.every + 1

    def count(self, steps):
        """Evaluations a piece of ``steps`` updates makes (without a stop):
        one after every ``every``-th update, and one after the last when the
        piece ends the run and that one is not already an ``every``-th.

        A piece that does not end the run gets one more slot when steps
        follow its last period: filled only if a stop rule ends the run there.
        """
        regular = self._regular(steps)
        ends_on_period = regular > 0 and self._first() + (regular - 1) * self.every == steps
        return regular + (not ends_on_period)

    def evaluates_last(self, steps):
        """Whether the last slot of :meth:`count` always evaluates (else only
        when the run stopped in it)."""
        regular = self._regular(steps)
        return self.at_end or (regular > 0 and
                               self._first() + (regular - 1) * self.every == steps)

    def end(self, period, steps):
        """Updates made (within the piece) when period ``period`` ends; traced or not."""
        end = self._first() + period * self.every
        return min(end, steps) if isinstance(end, int) else jnp.minimum(end, steps)

    def part(self, done, *, at_end):
        """The evaluation of a piece of this run that starts ``done`` updates in."""
        return dataclasses.replace(self, offset=(self.offset + done) % self.every,
                                   at_end=self.at_end and at_end)

    def call(self, model, params, state, eval_data):
        """``evaluate`` on (wrapped) params, as the model's user wrote it; a dict of arrays."""
        out = _called(self.evaluate, model, params, state, eval_data)
        return {name: jnp.asarray(value) for name, value in out.items()}

    def signed(self, values, dtype):
        """The monitored value, negated in mode ``"max"`` (lower is better), in ``dtype``."""
        value = jnp.asarray(values[self.monitor], dtype)
        return -value if self.mode == "max" else value


def watch(rule, state, value, *, tol, patience):
    """The stop state after an evaluation whose signed monitored value is
    ``value``, and whether it improved (strictly) on the best so far.

    ``tol`` is signed as ``value`` is: the run stops once ``value <= tol``.
    A value that is not finite never improves and does not stop the run.
    """
    improved = value < state.best
    best = jnp.where(improved, value, state.best)
    waited = jnp.where(improved, 0, state.waited + 1)
    stopped = state.stopped
    if rule.tol:
        stopped |= value <= tol
    if rule.patience:
        stopped |= waited >= patience
    return StopState(best, waited, stopped), improved


def choose(evaluate, eval_data, eval_every, monitor, mode, restore_best, *, batches, steps,
           params, state, model, check_finite):
    """``(Evaluation or None, eval_data, dtype the rule watches or None)``
    for ``fit``'s arguments, each checked in plain Python before any trace."""
    if evaluate is None:
        given = [name for name, value in (
            ("eval_data", given_data(eval_data)),
            ("eval_every", eval_every is not None), ("monitor", monitor is not None),
            ("restore_best", restore_best is not False))
            if value]
        if given:
            raise ValueError(f"{', '.join(given)} needs evaluate: pass evaluate=fn, where "
                             "fn(params, *eval_data) returns a dict of scalars, e.g. "
                             "{'accuracy': ...}.")
        if mode != "min":
            raise ValueError(f"mode={mode!r} needs monitor (and evaluate): mode says which "
                             "way the monitored value improves.")
        return None, (), None
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable as evaluate(params, *eval_data) -> dict; "
                        f"got {evaluate!r}.")
    eval_data = check_eval_data(eval_data, check_finite)
    if eval_every is None:
        every = _epoch(batches) or steps
    else:
        every = _checks.check_int(eval_every, "eval_every", minimum=1)
    if mode not in MODES:
        raise ValueError(f"mode must be 'min' or 'max'; got {mode!r}.")
    restore_best = _checks.check_bool(restore_best, "restore_best")
    if monitor is None and (restore_best or mode != "min"):
        raise ValueError(f"{'restore_best' if restore_best else 'mode'} needs monitor: name "
                         "the key of evaluate's dict to watch, e.g. monitor='accuracy'.")
    shapes = check_evaluate(evaluate, params, state, eval_data, model)
    dtype = None
    if monitor is not None:
        if not isinstance(monitor, str) or monitor not in shapes:
            raise ValueError(f"monitor must be a key of the dict evaluate returns, one of "
                             f"{sorted(shapes)}; got {monitor!r}.")
        dtype = shapes[monitor].dtype
    evaluation = Evaluation(evaluate, every, monitor, mode, restore_best)
    return evaluation, eval_data, dtype


def given_data(eval_data):
    """Whether ``eval_data`` is anything but the default ``()``."""
    return not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 0)


def _epoch(batches):
    """Steps in an epoch of shuffled batches (``replace=False``), else ``None``."""
    if not (getattr(batches, "keyed", False) and getattr(batches, "replace", True) is False):
        return None
    n, size = batches.n, batches.batch_size
    return -(-n // size) if getattr(batches, "drop_last", True) is False else n // size


def check_eval_data(eval_data, check_finite):
    """``eval_data`` as a tuple of arrays sharing their leading axis."""
    if not isinstance(eval_data, (tuple, list)):
        raise TypeError("eval_data must be a tuple of arrays, unpacked into evaluate's "
                        f"arguments, e.g. (valid_x, valid_y); got {type(eval_data).__name__}. "
                        "Wrap a single array as (x,).")
    eval_data = tuple(eval_data)
    for i, a in enumerate(eval_data):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"eval_data[{i}] must be an array; got {type(a).__name__}.")
    rows = {tuple(a.shape[:1]) for a in eval_data}
    if len(rows) > 1 or any(len(a.shape) == 0 for a in eval_data):
        shapes = ", ".join(f"eval_data[{i}].shape={tuple(a.shape)}"
                           for i, a in enumerate(eval_data))
        raise ValueError(f"eval_data arrays must share their leading axis (the rows); "
                         f"got {shapes}.")
    if check_finite:
        for i in _checks._non_finite(eval_data):
            raise ValueError(f"eval_data[{i}] contains NaN or inf values; clean or drop "
                             "those rows (or pass check_finite=False to skip this check).")
    return eval_data


def check_evaluate(evaluate, params, state, eval_data, model):
    """Traces ``evaluate`` once (``jax.eval_shape``, nothing runs or compiles)
    and checks it returns a dict of real scalars; returns their shapes."""
    def call(params, state, eval_data):
        return _called(evaluate, model, params, state, eval_data)

    args = "params, state, *eval_data" if model.state else "params, *eval_data"
    try:
        out = jax.eval_shape(call, params, state, eval_data)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
        raise ValueError(f"evaluate({args}) failed for eval_data of shape "
                         f"{_checks.shapes(_signatures(eval_data))}; it said: {error}") from error
    check_values(out)
    return out


def _called(evaluate, model, params, state, eval_data):
    """``evaluate`` called on (wrapped) params and state as its user wrote it."""
    if model.plain:
        return evaluate(params, *eval_data)
    if model.state:
        return evaluate(unwrap(params), unwrap(state), *eval_data)
    return evaluate(unwrap(params), *eval_data)


def _signatures(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def check_values(out):
    """``evaluate``'s result must be a dict of real scalars."""
    if not isinstance(out, Mapping) or not out:
        raise ValueError(f"evaluate must return a non-empty dict of scalars, e.g. "
                         f"{{'accuracy': acc}}; got {out!r}.")
    for name, value in out.items():
        if not isinstance(name, str):
            raise TypeError(f"evaluate's dict must have str keys; got {name!r}.")
        if getattr(value, "shape", None) != () or not (
                jnp.issubdtype(value.dtype, jnp.floating)
                or jnp.issubdtype(value.dtype, jnp.integer)):
            raise ValueError(f"evaluate must return a dict of real scalars; its {name!r} is "
                             f"{getattr(value, 'dtype', type(value).__name__)}"
                             f"{list(getattr(value, 'shape', ()))}. Reduce it, e.g. with "
                             ".mean().")
