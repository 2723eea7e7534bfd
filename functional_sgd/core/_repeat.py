"""Step 6 of the lesson, repeat: the training loop, as one compiled call.

:func:`loop` runs the spec's steps on the device: a ``jax.lax.scan`` of
exactly ``spec.steps`` steps, or a ``jax.lax.while_loop`` when a stop rule
may end the run early (step 7). :func:`run` is its host side: it compiles
the loop once per spec and fills in what the host already knows.

>>> import jax, jax.numpy as jnp
>>> from functional_sgd.core import LoopSpec, Inputs, initialize
>>> from functional_sgd.core._batches import Sampled  # the loop's batches, not fit's option
>>> x = jax.random.normal(jax.random.key(0), (64, 2)); y = x @ jnp.array([3.0, 2.0])
>>> loss = lambda a, x, y: ((x @ a - y) ** 2).mean()
>>> spec = LoopSpec(loss, batches=Sampled(n=64, batch_size=8), steps=200)
>>> carry = initialize(spec, jnp.zeros(2), None, 0, jnp.float32)
>>> carry, record = run(spec, carry, Inputs((x, y), 0.1, jax.random.key(1), None, None, None))
>>> [round(float(a), 2) for a in carry.params], int(carry.step)
([3.0, 2.0], 200)
"""

import functools
from typing import Any, NamedTuple
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Carry, Inputs, Prepared, Record, Training
from ..drivers import describe
from ..speed import (CPU_COMPILER_OPTIONS, column_major, moments, one_pass, quadratic_mse,
                     row_kernel)
from ._batches import Schedule, feed
from ._blocks import block_steps, run_in_blocks
from ._warn import caller_stacklevel
from ._compare import SMALL_ARRAY_BYTES, computation_key
from ._evaluate import not_run, run_with_evaluations
from ._initialize import optimizer_state
from ._loss import MaskedMean, row_function
from ._step import Stepper, model_step
from ._stop import first_bad


def run(spec, carry, inputs, *, mesh=None):
    """Runs the loop that ``spec`` describes from ``carry``; ``(Carry, Record)``.

    With ``mesh``, data-parallel over its devices (see ``drivers/_mesh.py``).
    """
    if mesh is not None:
        from ..drivers import data_parallel
        out = data_parallel(loop, spec, mesh, carry, inputs, slots_kind=Schedule)
    else:
        out = run_loop(spec, carry, inputs)
    return _known_on_the_host(spec, carry, *out)


def run_loop(spec, carry, inputs):
    """The compiled loop on one device, its ``(Carry, Record)`` as :func:`loop`
    returns them (without what the host knows)."""
    return carry_and_record(flat_loop_outputs(spec, (*carry, *inputs)))


def carry_and_record(out):
    """``(Carry, Record)`` of :func:`flat_loop_outputs`' flat tuple."""
    return Carry(*out[:_CARRY_FIELDS]), Record(*out[_CARRY_FIELDS:])


def flat_loop_outputs(spec, fields, *, again=False):
    """The compiled loop on ``(*carry, *inputs)`` (every field of both, in
    order), its ``Carry`` and ``Record`` fields as one flat tuple indexed by
    :data:`OUTPUT` (namedtuples are slow to build in Python).

    ``again``: a remembered call run again (``_warm``), whose loss and
    optimizer compiled before: it is not looked at for compiles
    (:func:`_note_compile`), and it passes ``None`` for a stop state the
    loop does not read (:func:`reads_stop`).
    """
    compiled = None if again else _compiled_count()  # ~0.1 us
    if not again and not reads_stop(spec):
        fields = (*fields[:_STOP], None, *fields[_STOP + 1:])
    if spec.plan.cpu_compiler_options:
        try:
            out = _compiled_loop(*fields, spec=spec)
        except ValueError:
            if not _inside_a_trace():
                raise
            out = _plain_loop(*fields, spec=spec)  # another jit's options apply
    else:
        out = _plain_loop(*fields, spec=spec)
    if compiled is not None and _compiled_count() != compiled:
        _note_compile(spec)
    return out


def reads_stop(spec):
    """Whether :func:`loop` reads the stop state it is given. Without a stop
    rule or evaluations, a run of more than one step is a ``scan`` that
    leaves the stop state to the host (:func:`_known_on_the_host`): the
    compiled loop takes ``None`` instead, one input fewer a call (a piece of
    one step inside it starts from the rule's own state)."""
    return spec.evaluation is not None or _runs_until_stop(spec)


def _runs_until_stop(spec):
    """Whether :func:`piece` runs a ``while_loop`` that watches the stop rule
    (:func:`_run_until_stop`) rather than a ``scan``."""
    return bool(spec.stop.active) or spec.steps == 1


def loop(carry, inputs, *, spec):
    """The loop itself (traced); ``(Carry, Record)``.

    Without a stop rule the returned ``Carry.step``/``.stop`` and
    ``Record.steps_run`` are ``None``: the host knows them (see :func:`run`),
    and every extra output is another task for XLA:CPU's runtime (on the
    lesson they cost a quarter of the call).

    Only the trainable params are carried from step to step; the frozen
    ones (``spec.model``) are read by every step and returned as they came.
    """
    model = spec.model
    start_step = jnp.asarray(carry.step, jnp.int32)
    params, frozen = model.split(carry.params)
    loss, data = _full_batch_speed_ups(spec, params, inputs.data)
    if spec.batches.padded:  # a short batch is the mean over its real rows
        loss = MaskedMean(loss)
    opt_state = optimizer_state(spec.optimizer, params, carry.opt_state)
    prepared = Prepared(loss, data, frozen, start_step)
    training = Training(params, opt_state, carry.state, carry.stop)
    if spec.evaluation is not None:  # periods of steps, each a piece, then an evaluation
        return run_with_evaluations(piece, spec, prepared, training, carry.best, inputs)
    block = block_steps(spec, data, inputs.indices is not None)
    if block:  # a long run gathers its batches a block of steps at a time
        return run_in_blocks(piece, block, spec, prepared, training, inputs)
    return piece(spec, prepared, training, inputs)


class _Scanned(NamedTuple):
    """What the ``scan`` of :func:`piece` carries from step to step."""

    params: Any
    opt_state: Any
    state: Any  # the model's
    rows: Any  # the batch source's position (``feed``)


def piece(spec, prepared, training, inputs):
    """``spec.steps`` steps from ``prepared.start_step`` on the trainable
    params of ``training`` (the loss and data as the speed plan prepared
    them); ``(Carry, Record)`` as :func:`loop` returns them."""
    model = spec.model
    start_step, frozen = prepared.start_step, prepared.frozen
    source = feed(spec.batches, prepared.data, inputs.key, inputs.indices, start_step,
                  spec.steps, spec.plan)
    key_at = (lambda t: jax.random.fold_in(inputs.rng, start_step + t)) if model.rng \
        else (lambda t: None)
    schedule = spec.lr_schedule
    lr_at = (lambda t: schedule(start_step + t)) if schedule is not None \
        else (lambda t: inputs.lr)
    stepper = Stepper(model, prepared.loss, spec.optimizer, frozen)

    def step(params, opt_state, model_state, batch, t):
        """Step ``t`` of this piece (its key and rate are those of ``start_step + t``)."""
        return model_step(stepper, lr_at(t), Training(params, opt_state, model_state, None),
                          batch, key_at(t))

    # A scan of one step is inlined by XLA, which then reads column-major data
    # another way: the loss would differ in its last bits from the same step
    # inside a longer run. A while loop whose end depends on the data stays a loop.
    if _runs_until_stop(spec):
        return _run_until_stop(spec, step, source, prepared, training, inputs)
    # Step t's key and rate need t; when the loop steps over rows, it steps over (t, rows).
    counted = (model.rng or schedule is not None) and source.xs is not None

    def body(state, x):
        t, x = x if counted else (x, x)
        batch, rows = source.batch_at(x, state.rows)
        out = step(state.params, state.opt_state, state.state, batch, t)
        return (_Scanned(out.params, out.opt_state, out.state, rows),
                (out.value, out.aux, state.params if spec.record_params else None))

    steps = jnp.arange(spec.steps, dtype=jnp.int32)
    xs = steps if source.xs is None else (steps, source.xs) if counted else source.xs
    last, (losses, aux, trajectory) = jax.lax.scan(
        body, _Scanned(training.params, training.opt_state, training.state, source.rows), xs)
    if spec.record_params:
        trajectory = _whole_path(model, jax.tree.map(
            lambda path, p: jnp.concatenate([path, p[None]]), trajectory, last.params),
            frozen, spec.steps + 1)
    return (Carry(model.join(last.params, frozen), last.opt_state, None, None, last.state),
            Record(losses, first_bad(losses, None), None, trajectory, aux))


def _whole_path(model, path, frozen, length):
    """The trajectory of the trainable params joined with the frozen ones,
    repeated along its leading axis, so every leaf has ``length`` rows."""
    if frozen is None:
        return path
    return model.join(path, jax.tree.map(
        lambda a: jnp.broadcast_to(a, (length,) + jnp.shape(a)), frozen))


def _full_batch_speed_ups(spec, params, data):
    """The loss and data a full-batch step reads, as the speed plan says:
    moments in place of the data, the data read once a step in row blocks,
    or data in the layout XLA:CPU reads fastest.
    (Both replay a ``loss(params, *batch) -> scalar``: a user's model with
    frozen leaves, a key, a state or an aux runs its loss as it is.)"""
    plan = spec.plan
    if plan.exact_moments:  # every full batch is the same: its moments stand in for it
        return quadratic_mse, (moments(*data),)
    if plan.row_kernel is True:  # decide() allows it for the library's row means only
        return row_kernel(spec.loss, row_function(spec.loss), params, data)
    if plan.one_pass is True:  # decide() allows it for a plain full-batch loss only
        return one_pass(spec.loss, params, data, plan.row_block_bytes,
                        transpose=plan.column_major, sums_as_dots=plan.sums_as_dots)
    if spec.batches.batch_size is None and data and spec.model.plain \
            and (plan.column_major or plan.sums_as_dots):
        return column_major(spec.loss, params, data, transpose=plan.column_major,
                            sums_as_dots=plan.sums_as_dots)
    return spec.loss, data


class _Stepping(NamedTuple):
    """What the ``while_loop`` of :func:`_run_until_stop` carries."""

    t: Any  # steps made
    params: Any
    opt_state: Any
    state: Any  # the model's
    losses: Any
    aux: Any
    trajectory: Any
    rows: Any  # the batch source's position (``feed``)
    stop: Any  # the ``StopState``


def _run_until_stop(spec, step, source, prepared, training, inputs):
    """Step 7 on the device: a while loop that ends at ``steps`` or when the rule
    fires (any non-finite loss ends it too).

    The records are filled in place: steps after the stop keep NaN losses
    (and aux of NaN, or zeros for integer and bool leaves)."""
    steps = spec.steps
    x_at, losses, aux, trajectory, first = _empty_records(spec, step, source, training)
    given = training.stop if training.stop is not None else spec.stop.init(first.value.dtype)
    stop_state = given._replace(best=jnp.asarray(given.best, first.value.dtype),
                                waited=jnp.asarray(given.waited, jnp.int32),
                                stopped=jnp.bool_(False))

    def keep_going(state):
        return (state.t < steps) & ~state.stop.stopped

    def body(state):
        t, trajectory = state.t, state.trajectory
        if spec.record_params:
            trajectory = jax.tree.map(lambda path, p: path.at[t].set(p), trajectory,
                                      state.params)
        batch, rows = source.batch_at(x_at(t), state.rows)
        out = step(state.params, state.opt_state, state.state, batch, t)
        stop_state = spec.stop.update(state.stop, out.value, tol=inputs.tol,
                                      patience=inputs.patience)
        aux = jax.tree.map(lambda path, a: path.at[t].set(a), state.aux, out.aux)
        return _Stepping(t + 1, out.params, out.opt_state, out.state,
                         state.losses.at[t].set(out.value), aux, trajectory, rows, stop_state)

    end = jax.lax.while_loop(keep_going, body, _Stepping(
        jnp.int32(0), training.params, training.opt_state, training.state, losses, aux,
        trajectory, source.rows, stop_state))
    frozen, t = prepared.frozen, end.t
    trajectory = _finish_trajectory(spec, end.trajectory, end.params, frozen, t)
    stop_state = end.stop if spec.stop.active else training.stop  # one step, no rule: unwatched
    return (Carry(spec.model.join(end.params, frozen), end.opt_state, prepared.start_step + t,
                  stop_state, end.state),
            Record(end.losses, first_bad(end.losses, t), t, trajectory, end.aux))


def _empty_records(spec, step, source, training):
    """``(x_at, losses, aux, trajectory, first)`` for a loop that fills its
    records in place: NaN losses (aux of NaN, or zeros for integer and bool
    leaves), zero trajectory; ``first`` is the shape of a step's output."""
    steps, params = spec.steps, training.params
    x_at = (lambda t: t) if source.xs is None else (lambda t: source.xs[t])
    first = jax.eval_shape(lambda: step(params, training.opt_state, training.state,
                                        source.batch_at(x_at(jnp.int32(0)), source.rows)[0],
                                        jnp.int32(0)))
    losses = jnp.full((steps,), jnp.nan, first.value.dtype)
    aux = jax.tree.map(lambda a: jnp.full((steps,) + a.shape, not_run(a.dtype), a.dtype),
                       first.aux)
    trajectory = jax.tree.map(
        lambda p: jnp.zeros((steps + 1,) + jnp.shape(p), jnp.result_type(p)), params) \
        if spec.record_params else None
    return x_at, losses, aux, trajectory, first


def _finish_trajectory(spec, trajectory, params, frozen, t):
    """A trajectory filled in place up to step ``t``: the steps after it
    hold the final params, joined with the frozen ones."""
    if not spec.record_params:
        return None
    after = jnp.arange(spec.steps + 1, dtype=jnp.int32) >= t
    trajectory = jax.tree.map(
        lambda path, p: jnp.where(after.reshape((-1,) + (1,) * p.ndim), p, path),
        trajectory, params)
    return _whole_path(spec.model, trajectory, frozen, spec.steps + 1)


def _known_on_the_host(spec, carry_in, carry, record):
    """Fills in what a loop without a stop rule leaves out: ``steps_run`` is
    ``steps``, the step is ``start_step + steps``, the stop state unchanged."""
    if record.steps_run is not None:
        return carry, record
    steps_run, step = known_counts(spec, carry_in.step, home_device(carry.params))
    return (Carry(carry.params, carry.opt_state, step, carry_in.stop, carry.state),
            Record(record.losses, record.diverged_at, steps_run, record.trajectory, record.aux))


def known_counts(spec, start, device=None):
    """``(steps_run, step)`` of a run from ``start`` that no rule stops:
    ``steps`` and ``start + steps``, int32 scalars on ``device`` (``None``:
    the default device)."""
    steps_run = _int32_constant(spec.steps, device)
    step = (_int32_constant(int(start) + spec.steps, device)
            if isinstance(start, (int, np.integer)) else start + steps_run)
    return steps_run, step


def home_device(params):
    """The one device ``params`` are on when it is not the default device
    (a CPU device of a GPU machine), else ``None``; ``None`` too for traced
    or sharded params. A run's own scalars (step counts, a repeated lr) are
    made there, so no call copies them between devices."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or isinstance(leaves[0], jax.core.Tracer):
        return None
    devices = getattr(leaves[0], "devices", lambda: ())()
    if len(devices) != 1:
        return None
    (device,) = devices
    return None if device == jax.devices()[0] else device


@functools.lru_cache(maxsize=256)
def _int32_constant(value, device=None):
    """One device scalar per value (JAX arrays are immutable, so sharing is safe),
    copied there as it is (``jnp.asarray`` of a Python int compiles a conversion)."""
    with jax.ensure_compile_time_eval():
        return jax.device_put(np.int32(value), device)


COMPILED_LOOPS_KEPT = 64
"""Compiled loops kept at once (each holds its executable, ~2 MB and more):
past this many, the oldest are dropped and compile again when asked for."""

_specs_compiled: dict[Any, Any] = {}
"""A program's description -> the keys of the (loss, optimizer, schedule) the
compiled loops hold for it: an index of the jit caches below, for the
warning of :func:`_note_compile`, cleared with them."""


def _compiled_count():
    return _compiled_loop._cache_size() + _plain_loop._cache_size()


def _note_compile(spec):
    """After a call that compiled: bound the compiled loops kept, and say
    (once per calling line: ``_warn``) when a loss or optimizer that looks
    like an earlier one but could not be told equal to it made the compile
    (one closing over an object that is compared by identity, made afresh
    per call; see ``_compare``)."""
    if _compiled_count() > COMPILED_LOOPS_KEPT:
        _compiled_loop.clear_cache()
        _plain_loop.clear_cache()
        _specs_compiled.clear()
    same_program = json.dumps(describe(spec, contents=False), sort_keys=True, default=str)
    objects = _specs_compiled.setdefault(same_program, set())
    objects.add(tuple(map(computation_key, (spec.loss, spec.optimizer, spec.lr_schedule))))
    if len(objects) >= 3:
        parts = ("loss", "optimizer", "lr schedule")
        renewed = [part for i, part in enumerate(parts) if len({o[i] for o in objects}) > 1]
        warnings.warn(
            f"fit compiled its loop again for a new {' and a new '.join(renewed)}: "
            "3 or more of them look alike, but fit could not tell them "
            "equal, so each compiled once more (loss and "
            "optimizer are compile-time constants, compared by their code and the values "
            "they close over; an object of another kind, or an array over "
            f"{SMALL_ARRAY_BYTES} bytes, in them is compared by identity). Create them once "
            "and reuse them, or close over the same objects; to change a learning rate "
            "between calls, pass lr=, or wrap the optimizer in optax.inject_hyperparams "
            "and change its state. (Said once per calling line.)",
            UserWarning, stacklevel=caller_stacklevel())


def _inside_a_trace():
    """Whether this call is being traced by an outer ``jax.jit`` (where
    ``compiler_options`` cannot apply): there, a new array is a tracer."""
    return isinstance(jnp.zeros(()), jax.core.Tracer)


def _loop_flat(*fields, spec):
    """:func:`loop` of ``Carry(*fields[:6]), Inputs(*fields[6:])``, its
    ``Carry`` and ``Record`` as one flat tuple: a jitted call builds
    namedtuple outputs slowly (a visible part of a call on the lesson in
    batches of 10 under ``tune_cpu``)."""
    carry, record = loop(Carry(*fields[:_CARRY_FIELDS]), Inputs(*fields[_CARRY_FIELDS:]),
                         spec=spec)
    return (*carry, *record)


_CARRY_FIELDS = len(Carry._fields)
_STOP = Carry._fields.index("stop")
OUTPUT = {name: i for i, name in enumerate(Carry._fields + Record._fields)}
"""Where each field of ``Carry`` and ``Record`` sits in :func:`flat_loop_outputs`."""
_compiled_loop = jax.jit(_loop_flat, static_argnames="spec",
                         compiler_options=CPU_COMPILER_OPTIONS)
_plain_loop = jax.jit(_loop_flat, static_argnames="spec")  # options apply only at the top
