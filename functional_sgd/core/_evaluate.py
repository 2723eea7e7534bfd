"""Step 7 as the lesson says it: "keep training until the accuracy of the
model started getting worse". Held-out data is evaluated inside the
compiled loop, and a stop rule may watch what it says.

``fit(..., evaluation=Evaluation(fn, data, every=k))`` runs
``fn(params, *data) -> dict of scalars`` after every ``k``-th update
and after the last one. An :class:`Evaluation` (part of the loop's
compile-time spec) says how; the loop (``_repeat``) runs periods of ``k``
steps, each ending in an evaluation.

With ``monitor="key"`` the stop rule (``tol``, ``patience``) watches that
value of the evaluations instead of the training loss: ``patience`` counts
evaluations without a strictly better value (a tie does not improve, as in
Keras), in ``mode`` ``"min"`` or ``"max"``. The rule works on the signed
value ``s = v`` (min) or ``s = -v`` (max), so "better" is always "lower".

>>> ev = Evaluation(evaluate=None, every=4)
>>> ev.segments(10), ev.count(10)  # evaluations after updates 4, 8 and 10
((0, 2, 2), 3)
>>> chunk = ev.part(6, at_end=False)  # updates 6..8 of the run, not its end
>>> chunk.segments(3), chunk.count(3)  # 6, 7 end a period (at 8), 8 starts one
((2, 0, 1), 2)
"""

import dataclasses
import functools
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from .._types import Carry, Record, StopState, Training
from ..drivers import TRAIN, aux_metrics
from . import _arguments, _trace
from ._batches import Shuffled, Stacked, steps_per_epoch
from ._data_checks import check_eval_data
from ._stop import StopRule, first_bad
from ._warn import caller_stacklevel


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run evaluates held-out data (compile-time).

    Attributes:
      evaluate: ``evaluate(params, *eval_data) -> dict of arrays`` (with a
        model state: ``evaluate(params, state, *eval_data)``); a bare
        array is taken as ``{"loss": value}``.
      every: updates between evaluations, or a tuple of the steps (counted
        from the run's start) after which to evaluate.
      monitor: the key of ``evaluate``'s dict the stop rule watches, or ``None``.
      mode: ``"min"`` or ``"max"``: which way the monitored value improves.
      restore_best: the run returns the params (and state) of the first
        best evaluation.
      offset: updates of the current period made before this piece of the
        run (a chunk, a resumed run): ``(piece start - run start) % every``;
        with listed steps, ``piece start - run start``.
      at_end: this piece ends the run, so it evaluates after its last update.
    """

    evaluate: Callable
    every: int
    monitor: Any = None
    mode: str = "min"
    restore_best: bool = False
    offset: int = 0
    at_end: bool = True

    @property
    def listed(self):
        """Whether the evaluations come after listed steps (not every ``every``)."""
        return isinstance(self.every, tuple)

    def ends(self, steps):
        """With listed steps: ``[(end, always), ...]``, the parts of a piece
        of ``steps`` updates, each ending (``end`` updates into the piece) in
        an evaluation slot: one per listed step within the piece, then the
        piece's end unless listed (it always evaluates when it ends the
        run, else only when a stop rule ended the run in it).

        >>> Evaluation(evaluate=None, every=(3, 5)).ends(8)
        [(3, True), (5, True), (8, True)]
        >>> Evaluation(evaluate=None, every=(3, 5)).part(4, at_end=False).ends(2)
        [(1, True), (2, False)]
        """
        ends = [(s - self.offset, True) for s in self.every
                if self.offset < s <= self.offset + steps]
        if not ends or ends[-1][0] != steps:
            ends.append((steps, self.at_end))
        return ends

    def segments(self, steps):
        """How a piece of ``steps`` updates is cut, statically: ``(head,
        periods, tail)``: ``head`` updates finish the period a previous piece
        began (0 if none), then ``periods`` whole periods of ``every``, then
        ``tail`` updates of a period this piece does not finish (0 if none).
        Each part ends in an evaluation slot."""
        head = min(self.every - self.offset, steps) if self.offset else 0
        periods = (steps - head) // self.every
        return head, periods, steps - head - periods * self.every

    def count(self, steps):
        """Evaluation slots of a piece of ``steps`` updates: one per part
        (see :meth:`segments`). A part that ends a period, or the run,
        always evaluates; one that ends only the piece (a chunk) evaluates
        only when a stop rule ended the run in it.
        """
        if self.listed:
            return len(self.ends(steps))
        head, periods, tail = self.segments(steps)
        return (head > 0) + periods + (tail > 0)

    def head_evaluates(self, steps):
        """Whether the head of a piece always evaluates (it ends a period or the run)."""
        return self.every - self.offset <= steps or self.at_end

    def part(self, done, *, at_end):
        """The evaluation of a piece of this run that starts ``done`` updates in."""
        offset = self.offset + done if self.listed else (self.offset + done) % self.every
        return dataclasses.replace(self, offset=offset, at_end=self.at_end and at_end)

    def call(self, model, params, state, eval_data):
        """``evaluate`` on (wrapped) params, as the model's user wrote it; a dict of arrays."""
        out = _trace.call_evaluate(self.evaluate, model, params, state, eval_data)
        return {name: jnp.asarray(value) for name, value in out.items()}

    def period_mean(self, length, dtype):
        """Returns ``means(record, ran)``: the mean training loss of a part
        of ``length`` steps of which ``ran`` ran, and the mean of each
        scalar aux metric, as ``{"train/loss": ..., "train/<aux key>": ...}``."""
        def means(record, ran):
            mask = None if isinstance(ran, int) else jnp.arange(length) < ran
            # A true division (XLA would multiply by 1/count for a constant count).
            count = jax.lax.optimization_barrier(
                jnp.maximum(jnp.asarray(ran, dtype), jnp.asarray(1, dtype)))

            def mean(values):
                # Summed in step order, so that the host gives the same bits
                # for a period a chunk cut in two (``drivers.period_means``).
                values = jnp.asarray(values, dtype)
                if mask is not None:
                    values = jnp.where(mask, values, 0)
                total = jax.lax.scan(lambda s, v: (s + v, None), jnp.zeros((), dtype),
                                     values)[0]
                return total / count

            out = {TRAIN + "loss": mean(record.losses)}
            for name, leaf in aux_metrics(record.aux):
                out[name] = mean(leaf)
            return out
        return means

    def signed(self, values, dtype):
        """The monitored value, negated in mode ``"max"`` (lower is better), in ``dtype``."""
        value = jnp.asarray(values[self.monitor], dtype)
        return -value if self.mode == "max" else value


def best_step(evaluation, record):
    """The update count after the first best evaluation of ``record`` (its
    monitored value, strictly better than every one before: the one
    ``restore_best`` keeps), ``-1`` if none was finite (traced: works under
    ``jax.vmap``)."""
    if evaluation is None or evaluation.monitor is None or record.evals is None:
        return -1
    values = jnp.asarray(record.evals[evaluation.monitor])
    values = -values if evaluation.mode == "max" else values
    made = (jnp.asarray(record.eval_steps) >= 0) & jnp.isfinite(values)
    first = jnp.argmin(jnp.where(made, values, jnp.inf))  # ties: the first
    return jnp.where(made.any(), jnp.asarray(record.eval_steps)[first], -1)


def restored(carry):
    """``carry`` of a run with ``restore_best``, its params (and state) those
    of its first best evaluation.

    A run with no valid evaluation (none ran before the run was stopped, or
    every monitored value was NaN, which never improves) has no best: it
    keeps its last params and state, as Keras keeps the final weights, and
    says so in a warning (when the run is concrete; under ``jax.jit`` or
    ``jax.vmap`` the choice is made on the device, silently).
    """
    params, state = carry.best
    evaluated = carry.stop.best < jnp.inf  # the start's best is inf; nothing beats NaN
    if _arguments.is_concrete(evaluated):
        if bool(evaluated):
            return carry._replace(params=params, state=state)
        warnings.warn(
            "Evaluation(restore_best=True) found no valid evaluation (none ran before the run "
            "stopped, or every monitored value was NaN): the last params are returned. "
            "Evaluate more often (Evaluation(every=)), or check what evaluate returns.",
            UserWarning, stacklevel=caller_stacklevel())
        return carry
    params, state = jax.tree.map(
        lambda best, last: best if best is last else jnp.where(evaluated, best, last),
        (params, state), (carry.params, carry.state))
    return carry._replace(params=params, state=state)


def _at_least_float32(dtype):
    """The dtype a period's mean loss is summed in: the loss's, or float32 for a
    narrower one (chosen, not promoted: tests run with strict promotion)."""
    return dtype if jnp.dtype(dtype).itemsize >= 4 else jnp.dtype(jnp.float32)


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
        stopped |= value <= jnp.asarray(tol, value.dtype)
    if rule.patience:
        stopped |= waited >= jnp.asarray(patience, waited.dtype)
    return StopState(best, waited, stopped), improved


def choose(option, *, batches, steps, params, state, model, check_finite):
    """``(Evaluation or None, eval_data, dtype the rule watches or None)``
    for ``fit``'s ``evaluation`` option as resolved (``_resolve.Resolved``:
    ``evaluate`` as the loop calls it, ``data`` a flat tuple, ``every`` in
    steps; its own fields checked when it was built), checked against the
    run in plain Python before any trace."""
    if option is None:
        return None, (), None
    evaluate, monitor = option.evaluate, option.monitor
    eval_data = check_eval_data(option.data, check_finite, getattr(evaluate, "groups", None))
    if option.every is None:
        every = _epoch(batches) or steps
    elif isinstance(option.every, tuple):  # steps the user listed (checked when built)
        if option.every[-1] > steps:
            raise ValueError(f"every's steps must be within the run of {steps} updates; got "
                             f"{list(option.every)}.")
        every = option.every
    else:
        every = _arguments.check_int(option.every, "Evaluation(every=)", minimum=1)
    shapes = _trace.check_evaluate(evaluate, params, state, eval_data, model)
    dtype = None
    if monitor is not None:
        if monitor not in shapes:
            raise ValueError(f"Evaluation(monitor=) must be a key of the dict evaluate "
                             f"returns, one of {sorted(shapes)}; got {monitor!r}.")
        if shapes[monitor].shape != ():
            raise ValueError(f"Evaluation(monitor={monitor!r}) must name a scalar of "
                             f"evaluate's dict (the stop rule compares one value); it is "
                             f"{shapes[monitor].dtype}{list(shapes[monitor].shape)}. Return "
                             "the value to watch as a scalar of its own.")
        dtype = shapes[monitor].dtype
    evaluation = Evaluation(evaluate, every, monitor, option.mode, option.restore_best)
    return evaluation, eval_data, dtype


@dataclasses.dataclass(frozen=True)
class HeldOutLoss:
    """``evaluate`` by default: the training loss on the held-out data, as
    ``{"loss": loss(params, *eval_data)}`` (frozen, so equal ones share a compile)."""

    loss: Callable

    def __call__(self, params, *eval_data):
        return {"loss": self.loss(params, *eval_data)}


def _epoch(batches):
    """Steps in an epoch of shuffled batches (``replace=False``), else ``None``."""
    if not isinstance(batches, Shuffled):
        return None
    return steps_per_epoch(batches.n, batches.batch_size, batches.drop_last)


class _Evaluating(NamedTuple):
    """What the parts of :func:`run_with_evaluations` carry from one to the next."""

    training: Training  # the trainable params, optimizer, model and stop states
    t: Any  # updates made
    losses: Any
    aux: Any
    trajectory: Any
    evals: Any  # each value of the evaluations' dicts, stacked over the slots
    eval_steps: Any
    best: Any  # with restore_best: (trainable params, state) of the first best evaluation


def run_with_evaluations(piece, spec, prepared, training, best, inputs):
    """The loop with evaluations (traced); ``(Carry, Record)``. ``best``:
    the carry's ``(params, state)`` of the best evaluation so far (with
    ``restore_best``).

    The steps run in parts (:meth:`Evaluation.segments`), each one a
    ``piece`` of the plain loop (a ``scan``, or a ``while_loop`` when the
    stop rule watches every step's loss), followed by an evaluation: a head
    part, a ``while_loop`` over whole periods, a tail part. Each part draws
    or gathers its batches as a chunk of its length would, so evaluating
    costs the evaluation and little more.

    With ``monitor`` the rule watches each evaluation's monitored value; a
    non-finite loss (with a rule on) ends the run after that period.
    """
    evaluation, model, rule, steps = spec.evaluation, spec.model, spec.stop, spec.steps
    frozen, start_step, stop_in = prepared.frozen, prepared.start_step, training.stop
    monitored = evaluation.monitor is not None
    inner = dataclasses.replace(spec, evaluation=None, stop=StopRule() if monitored else rule)
    head, periods, tail = (0, 0, 0) if evaluation.listed else evaluation.segments(steps)
    stacked = isinstance(spec.batches, Stacked)

    def run_part(training, start, length):
        """``length`` steps from ``start`` (within the run), as a piece."""
        part_inputs = inputs
        if inputs.indices is not None:
            part_inputs = part_inputs._replace(indices=_rows(inputs.indices, start, length))
        part = prepared._replace(start_step=start_step + start)
        if stacked:
            part = part._replace(data=tuple(_rows(a, start, length) for a in prepared.data))
        out, record = piece(dataclasses.replace(inner, steps=length), part, training,
                            part_inputs)
        ran = length if record.steps_run is None else record.steps_run
        stop_state = training.stop
        if inner.stop.active:
            stop_state = out.stop
        elif rule.active:  # with monitor: a diverged period ends the run
            stop_state = stop_state._replace(
                stopped=stop_state.stopped | ~jnp.isfinite(record.losses).all())
        return Training(model.split(out.params)[0], out.opt_state, out.state, stop_state), \
            ran, record

    evaluate = lambda params, state: evaluation.call(  # noqa: E731
        model, model.join(params, frozen), state, inputs.eval_data)
    first_loss = jax.eval_shape(lambda: run_part(training, 0, 1)[2])
    shapes = dict(jax.eval_shape(evaluate, training.params, training.state))
    mean_dtype = _at_least_float32(first_loss.losses.dtype)
    shapes.update(jax.eval_shape(lambda r: evaluation.period_mean(1, mean_dtype)(r, 1),
                                 first_loss))
    count = evaluation.count(steps)
    losses = jnp.full((steps,), jnp.nan, first_loss.losses.dtype)
    aux = jax.tree.map(lambda a: jnp.full((steps,) + a.shape[1:], not_run(a.dtype), a.dtype),
                       first_loss.aux)
    evals = {name: jnp.full((count,) + s.shape, not_run(s.dtype), s.dtype)
             for name, s in shapes.items()}
    eval_steps = jnp.full((count,), -1, jnp.int32)
    watch_dtype = jnp.result_type(training.stop.best) if monitored else \
        first_loss.losses.dtype
    stop_state = training.stop._replace(best=jnp.asarray(training.stop.best, watch_dtype),
                                        waited=jnp.asarray(training.stop.waited, jnp.int32),
                                        stopped=jnp.bool_(False))
    tol = inputs.tol
    if monitored and rule.tol:
        tol = evaluation.signed({evaluation.monitor: tol}, watch_dtype)
    best = (model.split(best[0])[0], best[1]) if evaluation.restore_best else None
    trajectory = None
    if spec.record_params:  # the params before every step and after the last
        trajectory = jax.tree.map(lambda p: jnp.zeros((steps + 1,) + jnp.shape(p),
                                                      jnp.result_type(p)),
                                  model.join(training.params, frozen))

    def part(state, start, length, slot, always):
        """Runs a part and its evaluation, writing the records in place."""
        training, ran, record = run_part(state.training, start, length)
        losses = jax.lax.dynamic_update_slice(state.losses, record.losses, (start,))
        aux = jax.tree.map(lambda path, a: jax.lax.dynamic_update_slice(
            path, a, (start,) + (0,) * (a.ndim - 1)), state.aux, record.aux)
        trajectory = state.trajectory
        if trajectory is not None:  # the part's path but its last point (the next part's first)
            trajectory = jax.tree.map(lambda path, a: jax.lax.dynamic_update_slice(
                path, a[:length], (start,) + (0,) * (a.ndim - 1)), trajectory,
                record.trajectory)
        t = jnp.asarray(start + ran, jnp.int32)  # int32 under x64 too
        values = {**evaluate(training.params, training.state),
                  **evaluation.period_mean(length, mean_dtype)(record, ran)}
        stop_state, best = training.stop, state.best
        evaluated = True if always else stop_state.stopped  # a chunk's tail: if it stopped
        evals = {name: path.at[slot].set(jnp.where(evaluated, values[name], path[slot]))
                 for name, path in state.evals.items()}
        eval_steps = state.eval_steps.at[slot].set(jnp.where(evaluated, start_step + t, -1))
        if monitored:
            watched, improved = watch(rule, stop_state, evaluation.signed(values, watch_dtype),
                                      tol=tol, patience=inputs.patience)
            stop_state = jax.tree.map(lambda new, old: jnp.where(evaluated, new, old),
                                      watched, stop_state)
            if best is not None:
                best = jax.tree.map(lambda now, kept: jnp.where(improved & evaluated, now, kept),
                                    (training.params, training.state), best)
            training = training._replace(stop=stop_state)
        return _Evaluating(training, t, losses, aux, trajectory, evals, eval_steps, best)

    def stopped(state):
        return state.training.stop.stopped

    state = _Evaluating(training._replace(stop=stop_state), jnp.int32(0), losses, aux,
                        trajectory, evals, eval_steps, best)
    if evaluation.listed:  # the parts, one after another, each skipped once stopped
        start = 0
        for slot, (end, always) in enumerate(evaluation.ends(steps)):
            run = functools.partial(part, start=start, length=end - start, slot=slot,
                                    always=always)
            state = run(state) if slot == 0 else jax.lax.cond(
                stopped(state), lambda state: state, run, state)
            start = end
        head = periods = tail = 0
    if head:
        state = part(state, 0, head, 0, evaluation.head_evaluates(steps))
    if periods:
        first_slot = int(head > 0)

        def period(numbered):
            p, state = numbered
            return p + 1, part(state, head + p * evaluation.every, evaluation.every,
                               first_slot + p, True)

        _, state = jax.lax.while_loop(lambda numbered: (numbered[0] < periods)
                                      & ~stopped(numbered[1]),
                                      period, (jnp.int32(0), state))
    if tail:
        state = jax.lax.cond(stopped(state), lambda state: state,
                             lambda state: part(state, steps - tail, tail, count - 1,
                                                evaluation.at_end), state)
    training, t, trajectory, best = state.training, state.t, state.trajectory, state.best
    if trajectory is not None:  # steps after the stop hold the final params
        last = model.join(training.params, frozen)
        after = jnp.arange(steps + 1, dtype=jnp.int32) >= t
        trajectory = jax.tree.map(
            lambda path, p: jnp.where(after.reshape((-1,) + (1,) * jnp.ndim(p)), p, path),
            trajectory, last)
    stop_state = training.stop if rule.active or monitored else stop_in
    if best is not None:
        best = (model.join(best[0], frozen), best[1])
    return (Carry(model.join(training.params, frozen), training.opt_state, start_step + t,
                  stop_state, training.state, best),
            Record(state.losses, first_bad(state.losses, t), t, trajectory, state.aux,
                   state.evals, state.eval_steps))


def _rows(array, start, length):
    """Rows ``start .. start + length`` of ``array`` (``start`` may be traced)."""
    return jax.lax.dynamic_slice_in_dim(array, start, length)


def not_run(dtype):
    """What a record holds for a step or evaluation that did not run: NaN,
    or zero where the dtype has no NaN."""
    return jnp.nan if jnp.issubdtype(dtype, jnp.inexact) else 0
