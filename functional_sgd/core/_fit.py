"""``fit``: the front door to the seven steps, one compiled call.

1. initialize  -- the caller's ``params`` (and ``optimizer.init``): ``_initialize``
2. predict     -- inside ``loss``, e.g. :func:`linear`: ``_predict``
3. loss        -- ``loss(params, *batch)``, e.g. :func:`mse`: ``_loss``
4. gradient    -- :func:`gradient`, ``jax.value_and_grad`` of the loss: ``_gradient``
5. step        -- :func:`sgd_update`, ``p <- p - lr * g`` (or an optax optimizer): ``_step``
6. repeat      -- ``jax.lax.scan`` over the steps: ``_repeat``
7. stop        -- after ``steps``, or earlier by ``tol`` / ``patience``
                  (then ``jax.lax.while_loop``): ``_stop``

Batch, mini-batch and stochastic descent share one loop; only the rows each
step sees differ (``_batches``). ``fit`` checks its arguments, sorts them
into the compile-time :class:`LoopSpec`, the carried state and the traced
inputs, and hands them to the loop or to a driver (chunks, checkpoints, a
mesh) that runs it.
"""

import dataclasses
import functools
import itertools
import warnings
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import drivers
from .. import speed as _speed  # fit's keyword `speed` is a plan
from .._types import Inputs, Started, fit_result
from . import (_arguments, _batches, _data_checks, _evaluate, _model, _optimizer_checks,
               _output_size, _stop, _trace, _warn)
from ._initialize import initialize
from ._loss import PytreeData, linear_mse, row_function
from ._options import Schedule, Shuffled
from ._repeat import run
from ._resolve import Resolved, resolve
from ._spec import LoopSpec


class Remember(NamedTuple):
    """Where a run that passed its checks is remembered, so that the same
    call again skips them (``_warm.py``)."""

    memory: Any  # a ``_warm.Memory``
    call: Any  # the call's key in it (``_warm.key``)


class Finish(NamedTuple):
    """How a run's host side goes: the loop, how it is cut, and its result."""

    loop: Any  # ``run`` (with its mesh)
    resolved: Resolved  # the run's options: chunk size, hook, checkpoint, mesh
    read_on_host: bool  # a memmap read a block of steps at a time
    result: Any  # ``result(carry, record) -> FitResult``
    given: Any  # the call's own values, for the chunked run's checks


class Fed(NamedTuple):
    """A call's data as its loop reads it: arrays in memory (or a memmap), or
    a stream whose batches come a block at a time."""

    loss: Any  # as the loop calls it (a pytree's data rebuilt for it)
    data: tuple  # the arrays the loop reads; a stream's: none
    flat: Any  # the data as given, flattened (do host arrays back it?)
    batches: Any  # which rows each step sees; a stream's: Stacked, from its first batch
    steps: int | None  # None: a stream's own length
    read_on_host: bool  # a memmap read a block of steps at a time
    source: Any  # the stream (``drivers.Stream``), or None
    rest: Any = None  # a stream's batches after its first, once read


class SetUp(NamedTuple):
    """A run checked and set up, before its loop runs (not ``_types.Prepared``,
    what the traced loop prepares)."""

    started: Started
    fed: Fed
    example: tuple  # the batch the loss was traced on
    params: Any  # the params as the loop takes them (a model's wrapped)
    check_finite: bool
    result: Any  # ``result(carry, record) -> FitResult``
    checked: tuple  # (params, data, lr, start_step, rng, state, eval_data) after their checks


def run_spec(spec, params, data, lr, key, remember=None):
    """The run ``spec`` (an ``_options.Spec``) asks for from ``params`` on
    ``data`` (see :func:`~functional_sgd.fit`); ``remember``: where a run
    that passed its checks is remembered, or ``None``. A stream of batches
    (:func:`~functional_sgd.stream`) takes this path too: the same checks
    and the same loop, only its batches come another way (``_fed``,
    ``_first_batch``, ``_run_stream``) and some options are refused."""
    resolved = resolve(spec, data)
    if isinstance(data, drivers.Stream):
        _refuse_with_a_stream(spec, resolved, key)
    model_parts, options, arrays = resolved.model, resolved.run, resolved.traced
    given = (params, options.opt_state, model_parts.state, arrays.indices, arrays.eval_data, key,
             model_parts.rng, lr, arrays.tol, arrays.patience)
    prepared = _prepare(spec, resolved, params, data, lr, key)
    if prepared.fed.source is not None:
        return _run_stream(prepared, resolved)
    started, fed = prepared.started, prepared.fed
    given += (fed.flat,)  # torch tensors are NumPy views from here on
    loop_spec, model, evaluation = started.spec, started.spec.model, started.spec.evaluation
    loop = run if options.mesh is None else partial(run, mesh=options.mesh)
    if not fed.read_on_host:
        _warn_if_lr_rounds_away(loop, started)
    finish = Finish(loop, resolved, fed.read_on_host, prepared.result, prepared.checked)
    on_evaluation = None if resolved.evaluation is None else resolved.evaluation.on_evaluation
    if on_evaluation is not None or options.progress:  # the run cut at evaluation boundaries
        chunk_size = options.chunk_size or drivers.period_chunks(
            None if evaluation is None else evaluation.every, fed.steps)
        with drivers.progress(fed.steps, options.progress) as bar:
            on_chunk = drivers.PeriodHook(_model.unwrapping(options.on_chunk, model),
                                          on_evaluation, bar)
            return _chunked(finish, started, chunk_size, on_chunk)
    chunk_size = options.chunk_size
    if fed.read_on_host:  # chunks read on the host, of a size chosen here unless given
        chunk_size = chunk_size or _host_block(fed.batches.batch_size, fed.data)
    if chunk_size is None:
        _arguments.check_no_chunk_options(options.on_chunk, options.checkpoint)
        out = finish.result(*loop(*started))
        if _data_checks.holds_host_arrays(given):
            jax.block_until_ready(out)  # JAX may read them in place, after fit returned
        if remember is not None and model.plain and not fed.read_on_host:
            remember.memory.remember(remember.call, loop_spec, started.carry)  # it ran
        return out
    return _chunked(finish, started, chunk_size, _model.unwrapping(options.on_chunk, model))


def _prepare(spec, resolved, params, data, lr, key):
    """The run checked and set up, for arrays and streams alike: its
    :class:`LoopSpec`, carry and inputs, and what the run's host side needs."""
    optimizer, options, arrays = spec.optimizer, resolved.run, resolved.traced
    check_finite = _arguments.check_bool(options.check_finite, "check_finite")
    params = _model.torch_as_arrays(params)
    fed = _fed(spec, resolved, data, key, check_finite)
    lr, lr_schedule = _rate(_optimizer_checks.check_lr(lr, optimizer, options.opt_state, params))
    steps = fed.steps
    _arguments.check_start(options.start_step, 0 if steps is None else steps, name="start_step")
    if lr_schedule is not None:
        _optimizer_checks.check_schedule_rates(lr_schedule, options.start_step, steps)
    stop = _stop.choose(arrays.tol, arrays.patience)
    fed, example = _first_batch(fed, options)
    loss, data = fed.loss, fed.data
    params, state, model = _model.choose(params, resolved.model)
    rng = resolved.model.rng
    loss_out, aux = _trace.check_loss(loss, params, example, model=model, state=state, rng=rng)
    if options.mesh is not None:
        drivers.check_mesh(options.mesh, data)
        _trace.check_loss_per_row(loss, params, data, model=model, state=state, rng=rng)
    elif fed.batches.padded:
        _trace.check_loss_per_row(loss, params, data, model=model, state=state, rng=rng,
                                  cause="drop_last=False")
    plan = _speed.decide(options.speed, _problem(fed, params, model, example, options.mesh))
    # A model's optimizer state covers its trainable leaves only.
    _optimizer_checks.check_opt_state(optimizer, options.opt_state, model.split(params)[0],
                            part="params" if model.trains is None else
                            "the trainable part of params")
    record_params = _arguments.check_bool(options.record_params, "record_params")
    held_out = resolved.evaluation
    if held_out is not None and steps is None and held_out.every is None:
        raise ValueError("Evaluation with a stream of unknown length needs every= (an int or "
                         "a list of steps), or give the stream's steps.")
    evaluation, eval_data, watched = _evaluate.choose(
        held_out, batches=fed.batches, steps=_arguments.MAX_STEP if steps is None else steps,
        params=params, state=state, model=model, check_finite=check_finite)
    # The evaluations' shapes: looked up (a stream's records are stacked a block at a time).
    evaluated = None if evaluation is None or fed.source is not None else (
        evaluation, _trace.check_evaluate(evaluation.evaluate, params, state, eval_data,
                                             model))
    if steps is not None:  # a stream of unknown length: no size known ahead
        _output_size.check_outputs_fit(_outputs(steps, loss_out, aux,
                                           params if record_params else None, evaluated))
    loop_spec = LoopSpec(loss, optimizer, fed.batches, steps, stop, record_params, plan, model,
                         evaluation, lr_schedule)
    watched = loss_out.dtype if watched is None or not _arguments.is_inexact_dtype(watched) \
        else watched
    started = Started(loop_spec, initialize(loop_spec, params, options.opt_state,
                                            options.start_step, watched, state),
                      Inputs(data, lr, key, arrays.indices, arrays.tol, arrays.patience, rng,
                             eval_data))
    return SetUp(started, fed, example, params, check_finite, _result_of(model, evaluation),
                 (params, data, lr, options.start_step, rng, state, eval_data))


def _fed(spec, resolved, data, key, check_finite):
    """The call's data as its loop reads it (see :class:`Fed`), checked; a
    stream's first batch is read later, once the options passed their checks."""
    if isinstance(data, drivers.Stream):
        steps = resolved.steps
        if steps is not None:
            steps = _arguments.check_int(steps, "steps", minimum=1, maximum=_arguments.MAX_STEP)
        return Fed(spec.loss, (), (), None, steps, False, data)
    indices = resolved.traced.indices
    flat, structure, names = _data_checks.flatten_data(data)
    read_on_host = _data_checks.read_on_host(flat, spec.batch_size, indices)
    data, n = _data_checks.check_data(flat, check_finite and not read_on_host, names)
    # The loop sees a tuple of arrays; the loss its pytree.
    loss = spec.loss if structure is None else PytreeData(spec.loss, structure)
    replace, drop_last = _row_order(spec.rows)
    batches, steps = _batches.choose(n, resolved.steps, spec.batch_size, key, indices, replace,
                                     drop_last)
    return Fed(loss, data, flat, batches, steps, read_on_host, None)


def _first_batch(fed, options):
    """``(fed, example)``: the batch the loss is traced on (the data itself
    for full-batch steps), and for a stream its first batch, read here (from
    where a checkpoint left off), which sets the stacked batches' rows."""
    source = fed.source
    if source is None:
        batch_size = fed.batches.batch_size
        return fed, fed.data if batch_size is None else _trace.batch_of(fed.data, batch_size)
    if _arguments.check_bool(options.record_params, "record_params"):
        raise ValueError("Run(record_params=True) needs a run of known length; a stream has "
                         "none.")
    done, saved = (0, None) if options.checkpoint is None else \
        drivers.saved_run(options.checkpoint)
    if fed.steps is not None and done >= fed.steps:
        done = fed.steps  # a finished run: its batches are not read
    from_done = callable(source.batches) and not hasattr(source.batches, "__iter__")
    example, rest = drivers.first_batch(
        source.batches(done) if from_done else source.batches, saved)
    return fed._replace(batches=_batches.Stacked(example[0].shape[0]), rest=rest), example


def _problem(fed, params, model, example, mesh):
    """The :class:`~functional_sgd.speed.Problem` the speed plan is decided
    for; a stream's is one batch (no exact moments: they need all the data)."""
    if fed.source is not None:
        return _speed.Problem(exact_mse=False, params=params, data=example, full_batch=False,
                              steps=1)
    loss = fed.loss
    return _speed.Problem(
        exact_mse=loss is linear_mse and model.plain, params=params, data=fed.data,
        full_batch=fed.batches.batch_size is None, steps=fed.steps, mesh=mesh,
        plain_model=model.plain, row=row_function(loss) if model.plain else None)


def _row_order(rows):
    """``(replace, drop_last)`` of the rows option: draws with replacement
    unless shuffled; short batches only with ``Shuffled(drop_last=False)``
    or a padded schedule."""
    replace = not isinstance(rows, Shuffled)
    drop_last = (not rows.padded if isinstance(rows, Schedule) else
                 rows.drop_last if isinstance(rows, Shuffled) else True)
    return replace, drop_last


def _result_of(model, evaluation):
    """``result(carry, record) -> FitResult`` of a run: params unwrapped for a
    user's model, the best params restored, the best step found."""
    result = fit_result if model.plain else _model.result  # the latter unwraps params
    if evaluation is not None and evaluation.restore_best:
        result = partial(_restored, result)
    if evaluation is not None and evaluation.monitor is not None:
        result = partial(_with_best_step, result, evaluation)
    return result


def _chunked(finish, started, chunk_size, on_chunk):
    """The run in chunks of ``chunk_size`` steps (or ``chunk_size(done)``
    steps, cut at listed evaluation steps), ``on_chunk`` after each."""
    loop, options, result = finish.loop, finish.resolved.run, finish.result
    if callable(chunk_size) and finish.read_on_host:  # host blocks of one size; hooks see all
        chunk_size = _host_block(started.spec.batches.batch_size, started.inputs.data)
    if not callable(chunk_size):
        chunk_size = _arguments.check_chunks(chunk_size, on_chunk, finish.given)
    else:
        _arguments.check_chunks(1, on_chunk, finish.given)
    if finish.read_on_host:
        return result(*_run_on_host(finish, started, chunk_size, on_chunk))
    if options.checkpoint is not None:
        return result(*drivers.run_with_checkpoints(
            options.checkpoint, loop, started, chunks=drivers.in_chunks_of(chunk_size),
            on_chunk=on_chunk))
    return result(*drivers.run_in_chunks(loop, started, chunk_size=chunk_size,
                                         on_chunk=on_chunk))


def _rate(lr):
    """``(lr, lr_schedule)``: a schedule ``step -> rate`` is compile-time (the
    spec's), a rate is traced (the inputs')."""
    return (None, lr) if callable(lr) else (lr, None)


def _outputs(steps, loss_out, aux, trajectory_of, evaluated):
    """What a run of ``steps`` returns besides its final carry, for
    :func:`~functional_sgd.core._output_size.check_outputs_fit`: the losses, the
    aux (``None`` without ``has_aux``), the params trajectory
    (``trajectory_of``: the params with ``record_params``, else ``None``)
    and the evaluations (``(Evaluation, shapes of its dict)``, or ``None``)."""
    stacked = _output_size.stacked
    shorter = ("Train fewer steps a call: continue the next call from this one's result "
               "(params=result.params, run=fsgd.Run.after(result)).")
    outputs = [(f"losses of {steps} steps", stacked(loss_out, steps), shorter)]
    if aux is not None:
        outputs.append((f"the aux of {steps} steps", stacked(aux, steps),
                        "Return a smaller aux from the loss (a mean, a few values). " + shorter))
    if trajectory_of is not None:
        outputs.append((f"record_params keeps {steps + 1} copies of params",
                        stacked(trajectory_of, steps + 1),
                        "Record fewer steps (Run(record_params=False), or fewer steps a call)."))
    if evaluated is not None:
        evaluation, shapes = evaluated
        count = evaluation.count(steps)
        outputs.append((f"{count} evaluations",
                        (stacked(shapes, count), stacked(np.int32(0), count)),
                        "Evaluate less often (a larger Evaluation(every=...))."))
    return outputs


LARGEST_EPS = float(jnp.finfo(jnp.bfloat16).eps)
"""The widest spacing near 1 of any float dtype that trains: an lr at or above
it moves every dtype's values (the usual case, decided without a walk)."""


def tiny_lr_dtypes(lr, optimizer, params):
    """The float dtypes of ``params`` whose ``eps`` plain SGD's concrete
    ``lr`` is below (an update there may round away), sorted; else ``[]``."""
    if type(lr) is float and lr >= LARGEST_EPS:  # the usual case: ~0.1 us on a warm call
        return []
    if optimizer is not None or lr is None or not _arguments.is_concrete(lr) \
            or float(lr) >= LARGEST_EPS:
        return []
    leaves = (params,) if isinstance(params, jax.Array) else jax.tree.leaves(params)
    dtypes = {a.dtype for a in leaves if hasattr(a, "dtype")}
    return sorted(str(d) for d in dtypes if float(lr) < _eps(d))


@functools.lru_cache(maxsize=16)
def _eps(dtype):
    """The spacing of ``dtype``'s values near 1 (0 for a dtype that does not train)."""
    return float(jnp.finfo(dtype).eps) if _arguments.is_inexact_dtype(dtype) else 0.0


def _warn_if_lr_rounds_away(loop, started):
    """Warns when plain SGD's first update ``p - lr * g`` changes no element
    of the trainable params: an ``lr`` below the spacing of their dtype's
    values (float16 params at ``lr=1e-5``), where every update rounds away.
    It may not stay so (the gradient may grow), hence a warning. Only an
    ``lr`` below some trainable leaf's ``eps`` is probed: that takes one
    compiled step on the first batch."""
    spec, carry, inputs = started
    lr = inputs.lr
    trainable = spec.model.split(carry.params)[0]
    small = tiny_lr_dtypes(lr, spec.optimizer, trainable)
    if not small or not all(map(_arguments.is_concrete, jax.tree.leaves((carry, inputs)))):
        return
    first = dataclasses.replace(spec, steps=1, stop=_stop.StopRule(), record_params=False,
                                evaluation=None)
    first_inputs = inputs if inputs.indices is None else inputs._replace(
        indices=inputs.indices[:1])
    moved, _ = loop(first, carry._replace(best=None), first_inputs)
    if all(bool((a == b).all()) for a, b in zip(
            jax.tree.leaves(trainable), jax.tree.leaves(spec.model.split(moved.params)[0]))):
        warnings.warn(
            f"lr={float(lr):g} is too small for params of dtype "
            f"{', '.join(small)}: the first update p - lr * g changes no "
            "element of the params (every |lr * g| is under half the spacing of the dtype's "
            "values near p), so the run trains nothing until the gradient grows. Pass a "
            "larger lr, or params of a wider dtype (e.g. float32).",
            UserWarning, stacklevel=_warn.caller_stacklevel())


def _with_best_step(result, evaluation, carry, record):
    """``result`` with its ``best_step`` (see ``_evaluate.best_step``)."""
    return result(carry, record)._replace(best_step=_evaluate.best_step(evaluation, record))


def _restored(result, carry, record):
    """``result`` of a run with ``restore_best`` (see ``_evaluate.restored``)."""
    return result(_evaluate.restored(carry), record)


HOST_BLOCK_BYTES = 16 * 2**20
"""Rows gathered on the host for one compiled call, when no chunk_size says."""


def _host_block(batch_size, data):
    """Steps whose rows one host read gathers: ``HOST_BLOCK_BYTES`` of them."""
    row_bytes = sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in data)
    return max(1, HOST_BLOCK_BYTES // max(1, row_bytes * batch_size))


def _run_on_host(finish, started, block, on_chunk):
    """Data read on the host a block of steps at a time (a memmap): each block's
    rows gathered there, then trained as stacked batches; with ``checkpoint``,
    written after every block as an in-memory run's chunks are."""
    options = finish.resolved.run
    if options.mesh is not None:
        raise ValueError("data read on the host (a np.memmap) runs on one device for now; "
                         "drop Run(mesh=), or pass an in-memory array.")
    check_finite = options.check_finite

    def in_blocks(run, started, *, on_chunk, done=0):
        spec, carry, inputs = started
        batches, start = spec.batches, int(carry.step)
        blocks = drivers.gathered_blocks(
            inputs.data, lambda first, length: batches.rows(
                inputs.key, None if inputs.indices is None
                else inputs.indices[first:first + length], start + first, length),
            spec.steps, block, check_finite, batches.padded)
        stacked = dataclasses.replace(spec, batches=_batches.Stacked(batches.batch_size,
                                                                     batches.padded))
        return drivers.run_in_blocks(
            run, Started(stacked, carry, inputs._replace(key=None, indices=None)), blocks,
            steps=spec.steps, on_chunk=on_chunk, result=finish.result)

    if options.checkpoint is not None:
        return drivers.run_with_checkpoints(options.checkpoint, finish.loop, started,
                                            chunks=in_blocks, on_chunk=on_chunk)
    return in_blocks(finish.loop, started, on_chunk=on_chunk)


def _refuse_with_a_stream(spec, resolved, key):
    """Refuses the options a stream cannot honour, by their names in the message."""
    model, options, rows = resolved.model, resolved.run, spec.rows
    given = {"batch_size": spec.batch_size, "key": key,
             "rows=fsgd.Schedule(...)": resolved.traced.indices,
             "rows=fsgd.Shuffled()": isinstance(rows, Shuffled) or None,
             "drop_last=False": not _row_order(rows)[1] or None,
             "Run(chunk_size=)": options.chunk_size, "Run(mesh=)": options.mesh,
             "Model(rng=)": model.rng, "Model(state=)": model.state,
             "Model(has_aux=True)": model.has_aux or None,
             "Model(trainable=)": model.trainable,
             "SpeedPlan(exact_moments=)": None if options.speed is None
             or options.speed.exact_moments == "auto" else True}
    refused = [name for name, value in given.items() if value is not None]
    if refused:
        raise ValueError(f"with a stream as data, {', '.join(refused)} cannot be used: the "
                         "stream decides the batches, their order and their length (rows, "
                         "batch_size; Run(chunk_size=): its block does), exact moments need "
                         "all the data at once, and a stream trains a plain model on one "
                         "device for now (no Model(...) parts, no Run(mesh=)).")


def _run_stream(prepared, resolved):
    """The run on a :func:`~functional_sgd.stream` of batches: blocks of them
    stacked on the host, each trained in one compiled call (``drivers/_blocks.py``);
    with ``checkpoint``, the run's state written after every block.

    Held-out data is evaluated inside each block's compiled call, at the
    periods counted from the stream's start (as in memory: the same
    evaluations, and no host round trip or second program per evaluation).
    A stream of unknown length (``steps=None``) needs ``every`` and
    evaluates its end only when that ends a period (or is listed): when a
    block trains, whether another follows is not yet known."""
    started, fed, example, options = prepared.started, prepared.fed, prepared.example, resolved.run
    steps = fed.steps

    def in_blocks(run, started, *, on_chunk, done=0):
        spec, carry, _ = started
        blocks = drivers.stream_blocks(  # a short batch's loss is a mean over its real rows
            fed.rest, fed.source.block, spec.steps, prepared.check_finite,
            lambda: _trace.check_loss_per_row(fed.loss, prepared.params, example,
                                              cause="a short batch"))
        if done:  # resumed: a stream used up ends the run where the checkpoint did
            first = next(blocks, None)
            if first is None:
                return carry, None
            blocks = itertools.chain([first], blocks)
        return drivers.run_in_blocks(run, started, blocks, on_chunk=on_chunk)

    on_chunk = options.on_chunk
    on_evaluation = None if resolved.evaluation is None else resolved.evaluation.on_evaluation
    with drivers.progress(steps, options.progress) as bar:
        if on_evaluation is not None or options.progress:
            on_chunk = drivers.PeriodHook(on_chunk, on_evaluation, bar)
        asked_to_stop = []  # whether on_chunk (or the hook) ended the run, not the stream
        if on_chunk is not None:
            on_chunk = partial(_noting_stop, on_chunk, asked_to_stop)
        if options.checkpoint is None:
            carry, record = in_blocks(run, started, on_chunk=on_chunk)
        else:
            # The block does not change the bits: a run may resume with another.
            described = {"batch": [f"{a.dtype}{list(a.shape)}" for a in example]}
            carry, record = drivers.run_with_checkpoints(
                options.checkpoint, run, started,
                on_chunk=on_chunk, chunks=in_blocks, source={"stream": described})
    steps_run = None if record is None else int(record.steps_run)
    if steps is not None and steps_run is not None and steps_run < steps \
            and not bool(carry.stop.stopped) and not asked_to_stop:
        warnings.warn(f"the stream ended after {steps_run} of steps={steps} batches: fit "
                      f"trained {steps_run} steps (result.steps_run; result.step="
                      f"{int(carry.step)}). Pass steps=None to train until the stream ends.",
                      UserWarning, stacklevel=_warn.caller_stacklevel())
    return prepared.result(carry, record)


def _noting_stop(on_chunk, asked_to_stop, result):
    """``on_chunk(result)``, noting in ``asked_to_stop`` when it ends the run."""
    stop = on_chunk(result)
    if drivers.asks_to_stop(stop):
        asked_to_stop.append(True)
    return stop
