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

import jax
import jax.numpy as jnp
import numpy as np

from .. import drivers
from .. import speed as _speed  # fit's keyword `speed` is a plan
from .._types import Inputs, fit_result
from . import _batches, _checks, _evaluate, _model, _model_checks, _stop, _warm
from ._initialize import initialize
from ._loss import PytreeData, linear_mse
from ._repeat import run
from ._spec import LoopSpec


def fit(loss, params, data=(), *, lr=None, steps=None, batch_size=None, key=None,
        indices=None, optimizer=None, replace=True, tol=None, patience=None,
        record_params=False, opt_state=None, start_step=0, check_finite=True,
        chunk_size=None, on_chunk=None, mesh=None, checkpoint=None, fast_path="auto",
        speed=None, rng=None, state=None, has_aux=False, trainable=None, evaluate=None,
        eval_data=(), eval_every=None, monitor=None, mode="min", restore_best=False,
        drop_last=True):
    """Fits ``params`` by gradient descent on ``loss``, in one compiled call.

    Each step ``t`` takes a batch ``B_t`` of rows and applies
    ``p <- p - lr * grad L_{B_t}(p)`` (or the given optax optimizer), where
    ``L_B(p) = loss(p, *(a[B] for a in data))``.

    * ``batch_size=None``: batch gradient descent, every step sees all rows;
    * ``batch_size=k`` with ``key``: mini-batch descent, ``k`` random rows
      a step (see :func:`sample_indices` for ``replace``);
    * ``batch_size=1`` with ``key``: stochastic descent, one row a step;
    * ``indices`` of shape ``(steps, batch_size)``: an explicit schedule.

    ``lr``, ``key``, ``params``, ``data``, ``tol``, ``patience``,
    ``start_step``, ``rng`` and ``state`` are traced: a new learning rate or
    new data of the same shape reuses the compiled loop, and ``jax.vmap(fit)``
    over any of them is a sweep (over ``rng``: a seed ensemble). ``loss``,
    ``optimizer``, ``steps``, ``batch_size``, ``has_aux``, ``trainable`` and
    the non-array leaves of ``params`` shape the program: changing them
    compiles again (so define ``loss`` once, not as a fresh ``lambda`` per call).

    Args:
      loss: ``loss(params, *batch) -> scalar``; with ``state`` and
        ``has_aux`` see those; with ``rng`` it also takes the keyword ``key``.
      params: initial parameters, any pytree (NumPy or JAX arrays; an
        equinox ``Module``, a flax nnx ``State``, a dict, ...). Its leaves
        that are arrays of an inexact dtype train (NumPy scalars too);
        every other leaf (integer, bool and key arrays, functions, Python
        ints, ``None``) passes through unchanged: no gradient, no update,
        no optimizer state. A Python float trains (as a float array) when
        it is the whole params or sits in dicts, lists and tuples only;
        inside a Module or any other pytree node it is a compile-time
        constant, never traced, as equinox has it (``eqx.nn.Dropout``'s
        rate); so is one that ``trainable`` freezes. ``result.params`` has
        the type given. An nnx random stream (``nnx.Dropout``'s) belongs
        in ``state``, not here (see ``state``). A complex leaf of a real loss
        steps along the conjugate of ``jax.grad``'s gradient (see
        :func:`gradient`), so it descends as in torch and optax.
        CPU torch tensors among the leaves are taken as NumPy copies of
        their values (and come back as JAX arrays); the tensors are never
        written to.
      data: tuple of arrays sharing their leading axis ``n`` (unpacked into
        the loss's arguments), or ``()``; or any other pytree of such arrays,
        the elements of a tuple each one argument (a dict or nested tuples
        inside the tuple), a dict passed as one argument:
        ``fit(loss, p, {"x": x, "y": y})`` calls ``loss(p, {"x": xb, "y":
        yb})``. Like all JAX inputs, float64 NumPy data becomes float32
        unless ``jax_enable_x64`` is on. A ``np.memmap`` among them, with
        ``batch_size`` or ``indices``, is never read whole: each block of
        steps (``chunk_size``, by default 16 MiB of rows) has its rows read
        from the file with ``pread`` and checked for NaN once, so the
        process holds those rows and not the file's pages. The file is
        the one the memmap maps: one whose name now names another file
        (replaced by a rename since the memmap was made) is refused, and
        one replaced during the run is still read as mapped. A
        :func:`~functional_sgd.stream` of batches trains on any iterable.
        When any input (data, params, ``indices``, ``eval_data``, ...) is a
        NumPy array, ``fit`` returns only once the run has finished: JAX's
        CPU client reads aligned NumPy memory in place, so a run still
        going would see the caller's later writes to it. With JAX arrays
        only, it returns at once, as JAX calls do (copying the inputs
        instead would cost a copy of the data every call).
      lr: learning rate ``> 0``, a real scalar of any float dtype (the 16-bit
        ones included); required unless ``optimizer`` is given. Plain SGD
        whose first update rounds away entirely warns. Or a
        schedule ``lr(step) -> rate`` (an optax schedule such as
        ``optax.linear_schedule(0.1, 0.01, 1000)``): step ``t`` (global,
        counted from ``start_step``, so chunks and resumed runs keep the
        bits) updates ``p <- p - lr(t) * g``, with the bits of
        ``optimizer=optax.sgd(lr)``. A schedule is compile-time, as
        ``optimizer`` is; a rate is traced.
      steps: number of updates; may be omitted when ``indices`` is given.
      batch_size: rows per step, ``1 <= batch_size <= n``; ``None`` for all.
      key: ``jax.random`` key for drawing batches; required with
        ``batch_size``. Step ``t`` draws from ``fold_in(key, t)``.
      indices: explicit ``(steps, batch_size)`` integer schedule of rows in
        ``[0, n)``; with ``drop_last=False`` a slot may also hold ``-1``,
        padding (anywhere in its step's row; every step needs one real row).
      optimizer: an optax ``GradientTransformation`` used instead of plain SGD;
        it sees only the trainable leaves. One that takes extra arguments
        (``GradientTransformationExtraArgs``: ``reduce_on_plateau``,
        ``lbfgs``, ``polyak_sgd``) gets ``value=``, ``grad=`` and
        ``value_fn=`` (the step's batch loss as a function of the trainable
        params, with the step's key and state) on every update.
      replace: with ``key``: ``True`` draws every step's rows independently
        (the lesson's ``rand_idx``), ``False`` runs shuffled epochs.
      drop_last: with ``replace=False``, ``True`` cuts each epoch into
        ``n // batch_size`` full batches (the ``n % batch_size`` rows left
        over sit that epoch out); ``False`` gives each epoch ``ceil(n /
        batch_size)`` steps, the last one holding the rows left over, as
        torch's ``DataLoader(shuffle=True, drop_last=False)`` does (see
        :func:`sample_indices`). With ``indices``, ``False`` lets the
        schedule hold ``-1`` padding. A short step's loss is the mean over
        its real rows ``r``, ``sum_r loss(p, {r}) / count``, each row a batch
        of one (as under ``mesh``): equal to ``loss`` on those rows only when
        the loss is a mean over the rows of its batch, as ``mse`` and
        cross-entropy are; fit checks that it runs on one row but cannot
        check that it is a mean. Full steps call the loss as ever. Not with
        ``rng``, ``state`` or ``has_aux`` (a batch-wide key, batch statistics
        or aux): refused. Traced ``indices`` (under ``jax.jit``) are taken as
        padded when ``drop_last=False``. A :func:`~functional_sgd.stream`
        always takes a short batch this way.
      tol: stop once a step's loss is ``<= tol``.
      patience: stop once the best loss has not improved for this many steps
        (an integer scalar of any int dtype, ``>= 1``).
        With either stop rule, a non-finite loss also stops the run (a
        finite one grown 1e15-fold is reported in ``diverged_at`` but does
        not stop it).
      record_params: also return the parameter trajectory.
      opt_state: optimizer state to continue from (``result.opt_state``).
      start_step: global index of the first step (``result.step`` to
        continue); it selects the batches drawn from ``key``.
      check_finite: ``True`` or ``False``: refuse data containing NaN or inf. NumPy arrays and
        JAX arrays on the CPU (which may be views of NumPy or DLPack memory
        that their owner writes to) are checked on every call; a JAX array
        on an accelerator, whose values XLA owns, only the first time
        ``fit`` sees it (one imported there by DLPack shares its exporter's
        memory: pass a copy, ``jnp.array(a)``, if the exporter may write to
        it). ``indices`` are range-checked the same way.
      chunk_size: run the loop as compiled chunks of this many steps, with a
        host step between chunks (for progress bars and checkpoints). With
        ``chunk_size >= 2`` the result has the same bits as one call (every
        step compiles to the same code); ``chunk_size=1`` runs each step as
        a program of its own, whose update XLA may round differently in the
        last bit (seen: an equinox MLP with adam on single rows, 6e-8 in
        float32 params). Each chunk syncs once.
      on_chunk: called after each chunk with that chunk's :class:`FitResult`
        (its ``losses`` cover the chunk; ``step`` is the global step after
        it). Returning ``True`` (or any boolean scalar that is true: a
        NumPy or JAX one too, as ``result.losses[-1] < 1.0`` gives) stops the
        run after that chunk (the result is returned, as after a stop rule);
        ``None`` or a false one goes on; any other value is refused with a
        ``TypeError``. Needs ``chunk_size``.
      mesh: a ``jax.sharding.Mesh``: run data-parallel, rows of ``data``
        sharded over all its axes, params replicated, gradients all-reduced
        every step (the same result as one device, up to the order of
        additions). ``loss`` must be a mean over the rows of its batch.
      checkpoint: a path to a regular file, or to none yet (a folder, a
        device such as ``/dev/null`` or a pipe is refused before any step):
        after every chunk the run's state is written there atomically, and a run started again with the same arguments
        resumes from it with the same bits. Needs ``chunk_size`` (a memmap's
        blocks and a stream's are its chunks). A memmap is fingerprinted by
        its file (name, size, modification time) and a hash of 1,024 of its
        rows, not by all its bytes; a stream by its batches' shapes
        (see :func:`~functional_sgd.stream` for resuming one).
      fast_path: ``"auto"``, ``True`` or ``False`` (nothing else, ``1``
        included; not with a stream). Full-batch descent on
        ``linear_mse`` (by identity) with data ``(x, y)`` and one params
        array can run from sufficient statistics (``XᵀX`` and friends, one
        pass over the data, then ``O(d²)`` a step; see ``speed/_moments.py``),
        with any optimizer and any float dtype. ``"auto"`` leaves it to
        ``speed`` (by default: where it applies and is cheaper, ``d <= 2 *
        steps`` and ``steps * n * d >= 1e5``); ``True`` insists (and says why
        it cannot); ``False`` always runs the plain loop.
      speed: a :class:`functional_sgd.speed.SpeedPlan` switching the loop's
        speed-ups one by one; ``None`` for the defaults.
      rng: a ``jax.random`` key for the model's own randomness (dropout):
        step ``t`` (global, counted from ``start_step``) calls the loss with
        the keyword ``key=jax.random.fold_in(rng, t)``. Chunks, checkpoints
        and ``start_step`` keep the bits. Take it apart from ``key`` (e.g.
        ``key, rng = jax.random.split(seed)``): the same key would draw the
        batches and the dropout masks from the same bits.
      state: model state the forward pass updates (BatchNorm statistics):
        the loss is then ``loss(params, state, *batch) -> (value,
        new_state)``; the new state (same structure, shapes and dtypes) is
        carried to the next step and never differentiated (PRNG keys and
        integer counters included); ``result.state`` is the last one. A
        flax nnx model: ``graphdef, params, rest = nnx.split(model,
        nnx.Param, ...)``, ``state=rest``, a loss that merges them and
        returns ``(value, nnx.split(model, nnx.Param, ...)[2])``; the
        recipe, run, is in ``functional_sgd.core._flax_nnx``.
        Checkpointed with the params. Not with ``mesh``:
        refused, since the mesh evaluates the loss row by row, where batch
        statistics mean nothing (the same holds for ``rng`` and ``has_aux``).
      has_aux: the loss returns ``(value, aux)``, with ``state`` ``(value,
        new_state, aux)``; ``result.aux`` stacks aux (a pytree of arrays)
        over the steps. Steps a stop rule cut off hold NaN (zero for integer
        and bool leaves), as their losses do.
      trainable: freezes more of ``params``: a pytree of bools with the
        structure of ``params`` or a prefix of it (one bool for a subtree),
        or a function ``leaf -> bool``. Frozen leaves pass through as
        non-float ones do.
      evaluate, eval_data, eval_every, monitor, mode: held-out evaluation
        inside the loop and a stop rule on it (``_evaluate``); ``eval_data``
        must have rows (0 rows is refused: its metrics would be NaN).
      restore_best: return the params (and state) of the first best
        evaluation of ``monitor``. With no valid evaluation (none ran before
        the run stopped, e.g. ``on_chunk`` stopped it first, or every
        monitored value was NaN) the last params are returned, as Keras
        keeps the final weights, with a ``UserWarning`` naming
        ``restore_best``.

    Returns:
      A :class:`FitResult`. Its records (losses, aux, trajectory,
      evaluations) are estimated from their shapes before anything
      compiles: a call whose records would take more than half this
      machine's memory is refused, naming each record's size.

    >>> import jax, jax.numpy as jnp
    >>> from functional_sgd import fit, lesson_data, linear_mse
    >>> x, y = lesson_data(jax.random.key(0))
    >>> result = fit(linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100)
    >>> bool(result.losses[-1] < 0.1 < result.losses[0])
    True
    >>> [round(float(a), 1) for a in result.params]
    [3.1, 2.4]
    """
    if isinstance(data, drivers.Stream):
        if evaluate is not None:
            raise ValueError("evaluate cannot be used with a stream as data for now: pass "
                             "in-memory arrays, or evaluate in on_chunk.")
        _evaluate.choose(None, eval_data, eval_every, monitor, mode, restore_best,
                         batches=None, steps=None, params=None, state=None, model=None,
                         check_finite=False)  # refuses their use without evaluate
        return _fit_stream(loss, params, data, lr=lr, steps=steps, optimizer=optimizer,
                           tol=tol, patience=patience, record_params=record_params,
                           opt_state=opt_state, start_step=start_step,
                           check_finite=check_finite, on_chunk=on_chunk,
                           checkpoint=checkpoint, speed=speed,
                           unused=dict(batch_size=batch_size, key=key, indices=indices,
                                       chunk_size=chunk_size, mesh=mesh, rng=rng, state=state,
                                       has_aux=has_aux or None, trainable=trainable,
                                       replace=_unless(replace, True),
                                       drop_last=_unless(drop_last, True),
                                       fast_path=_unless(fast_path, "auto")))
    # A call repeating an earlier one's arrays and options skips the checks it passed.
    warm_call = _warm.key(loss, params, data, key, indices, optimizer, (
        steps, batch_size, replace, tol, patience, record_params, start_step, check_finite,
        fast_path, speed, drop_last, evaluate, eval_every, monitor, mode, restore_best),
        eval_data) if (
        opt_state is None and chunk_size is None and on_chunk is None and mesh is None
        and not callable(lr)
        and checkpoint is None and rng is None and state is None and has_aux is False
        and trainable is None and (evaluate is not None or (
            not _evaluate.given_data(eval_data) and eval_every is None and monitor is None
            and mode == "min" and restore_best is False))) else None
    if warm_call is not None:
        warm = _warm.recall(warm_call)
        if warm is not None and _checks.values_still_pass(
                data, indices, eval_data, check_finite=check_finite, drop_last=drop_last,
                padded=warm.again.spec.batches.padded):
            lr = _checks.check_lr(lr, optimizer, None, params)
            if not _tiny_lr_dtypes(lr, optimizer, params):  # else probed on the full path
                return warm.again(params, data, lr, key, indices, tol, patience, eval_data)
    given = (params, opt_state, state, indices, eval_data, key, rng, lr, tol, patience)
    check_finite = _checks.check_bool(check_finite, "check_finite")
    params = _model.torch_as_arrays(params)
    data, structure, names = _checks.flatten_data(data)
    given += (data,)  # torch tensors are NumPy views from here on
    read_on_host = _checks.read_on_host(data, batch_size, indices)
    data, n = _checks.check_data(data, check_finite and not read_on_host, names)
    if structure is not None:  # the loop sees a tuple of arrays; the loss its pytree
        loss = PytreeData(loss, structure)
    lr, lr_schedule = _rate(_checks.check_lr(lr, optimizer, opt_state, params))
    batches, steps = _batches.choose(n, steps, batch_size, key, indices, replace, drop_last)
    _checks.check_start(start_step, steps, name="start_step")
    stop = _stop.choose(tol, patience)
    params, state, model = _model.choose(params, trainable, rng, state, has_aux)
    example = data if batches.batch_size is None else _checks.batch_of(data, batches.batch_size)
    loss_out, aux = (_checks.check_loss(loss, params, example), None) if model.plain else \
        _model_checks.check_loss(loss, params, state, example, model, rng)
    if mesh is not None:
        drivers.check_mesh(mesh, data)
        _model_checks.check_loss_per_row(loss, params, state, data, model, rng)
    elif batches.padded:
        _model_checks.check_loss_per_row(loss, params, state, data, model, rng,
                                         cause="drop_last=False")
    plan = _speed.decide(speed, fast_path, exact_mse=loss is linear_mse and model.plain,
                         params=params, data=data, full_batch=batches.batch_size is None,
                         steps=steps, mesh=mesh)
    # A model's optimizer state covers its trainable leaves only.
    _checks.check_opt_state(optimizer, opt_state, model.split(params)[0],
                            part="params" if model.trains is None else
                            "the trainable part of params")
    record_params = _checks.check_bool(record_params, "record_params")
    evaluation, eval_data, watched = _evaluate.choose(
        evaluate, eval_data, eval_every, monitor, mode, restore_best, batches=batches,
        steps=steps, params=params, state=state, model=model, check_finite=check_finite)
    evaluated = None if evaluation is None else (  # the evaluations' shapes: looked up
        evaluation, _evaluate.check_evaluate(evaluate, params, state, eval_data, model))
    _checks.check_outputs_fit(_outputs(steps, loss_out, aux,
                                       params if record_params else None, evaluated))
    spec = LoopSpec(loss, optimizer, batches, steps, stop, record_params, plan, model,
                    evaluation, lr_schedule)
    watched = loss_out.dtype if watched is None or not _checks.is_inexact_dtype(watched) \
        else watched
    carry = initialize(spec, params, opt_state, start_step, watched, state)
    inputs = Inputs(data, lr, key, indices, tol, patience, rng, eval_data)
    loop = run if mesh is None else partial(run, mesh=mesh)
    result = fit_result if model.plain else _model.result  # the latter unwraps params
    if evaluation is not None and evaluation.restore_best:
        result = partial(_restored, result)
    if not read_on_host:
        _warn_if_lr_rounds_away(loop, spec, carry, inputs)
    if read_on_host:  # chunks read on the host, of a size chosen here unless given
        chunk_size = chunk_size or _host_block(spec.batches.batch_size, data)
    if chunk_size is None:
        _checks.check_no_chunk_options(on_chunk, checkpoint)
        out = result(*loop(spec, carry, inputs))
        if _checks.holds_host_arrays(given):
            jax.block_until_ready(out)  # JAX may read them in place, after fit returned
        if warm_call is not None and model.plain and not read_on_host:
            _warm.remember(warm_call, spec, carry)  # after the run: it succeeded
        return out
    chunk_size = _checks.check_chunks(chunk_size, on_chunk,
                                      (params, data, lr, start_step, rng, state, eval_data))
    on_chunk = _model.unwrapping(on_chunk, model)
    if read_on_host:
        return result(*_run_on_host(loop, spec, carry, inputs, chunk_size, on_chunk,
                                    check_finite, mesh, checkpoint, result))
    if checkpoint is not None:
        return result(*drivers.run_with_checkpoints(
            checkpoint, loop, spec, carry, inputs, chunk_size=chunk_size, on_chunk=on_chunk))
    return result(*drivers.run_in_chunks(loop, spec, carry, inputs,
                                         chunk_size=chunk_size, on_chunk=on_chunk))


def _rate(lr):
    """``(lr, lr_schedule)``: a schedule ``step -> rate`` is compile-time (the
    spec's), a rate is traced (the inputs')."""
    return (None, lr) if callable(lr) else (lr, None)


def _outputs(steps, loss_out, aux, trajectory_of, evaluated):
    """What a run of ``steps`` returns besides its final carry, for
    :func:`~functional_sgd.core._checks.check_outputs_fit`: the losses, the
    aux (``None`` without ``has_aux``), the params trajectory
    (``trajectory_of``: the params with ``record_params``, else ``None``)
    and the evaluations (``(Evaluation, shapes of its dict)``, or ``None``)."""
    stacked = _checks.stacked
    shorter = ("Train fewer steps a call: continue the next call from this one's result "
               "(params, opt_state=result.opt_state, start_step=result.step).")
    outputs = [(f"losses of {steps} steps", stacked(loss_out, steps), shorter)]
    if aux is not None:
        outputs.append((f"the aux of {steps} steps", stacked(aux, steps),
                        "Return a smaller aux from the loss (a mean, a few values). " + shorter))
    if trajectory_of is not None:
        outputs.append((f"record_params keeps {steps + 1} copies of params",
                        stacked(trajectory_of, steps + 1),
                        "Record fewer steps (record_params=False, or fewer steps a call)."))
    if evaluated is not None:
        evaluation, shapes = evaluated
        count = evaluation.count(steps)
        outputs.append((f"{count} evaluations",
                        (stacked(shapes, count), stacked(np.int32(0), count)),
                        "Evaluate less often (a larger eval_every)."))
    return outputs


LARGEST_EPS = float(jnp.finfo(jnp.bfloat16).eps)
"""The widest spacing near 1 of any float dtype that trains: an lr at or above
it moves every dtype's values (the usual case, decided without a walk)."""


def _tiny_lr_dtypes(lr, optimizer, params):
    """The float dtypes of ``params`` whose ``eps`` plain SGD's concrete
    ``lr`` is below (an update there may round away), sorted; else ``[]``."""
    if type(lr) is float and lr >= LARGEST_EPS:  # the usual case: ~0.1 us on a warm call
        return []
    if optimizer is not None or lr is None or not _checks.is_concrete(lr) \
            or float(lr) >= LARGEST_EPS:
        return []
    leaves = (params,) if isinstance(params, jax.Array) else jax.tree.leaves(params)
    dtypes = {a.dtype for a in leaves if hasattr(a, "dtype")}
    return sorted(str(d) for d in dtypes if float(lr) < _eps(d))


@functools.lru_cache(maxsize=16)
def _eps(dtype):
    """The spacing of ``dtype``'s values near 1 (0 for a dtype that does not train)."""
    return float(jnp.finfo(dtype).eps) if _checks.is_inexact_dtype(dtype) else 0.0


def _warn_if_lr_rounds_away(loop, spec, carry, inputs):
    """Warns when plain SGD's first update ``p - lr * g`` changes no element
    of the trainable params: an ``lr`` below the spacing of their dtype's
    values (float16 params at ``lr=1e-5``), where every update rounds away.
    It may not stay so (the gradient may grow), hence a warning. Only an
    ``lr`` below some trainable leaf's ``eps`` is probed: that takes one
    compiled step on the first batch."""
    lr = inputs.lr
    trainable = spec.model.split(carry.params)[0]
    small = _tiny_lr_dtypes(lr, spec.optimizer, trainable)
    if not small or not all(map(_checks.is_concrete, jax.tree.leaves((carry, inputs)))):
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
            UserWarning, stacklevel=_checks.caller_stacklevel())


def _restored(result, carry, record):
    """``result`` of a run with ``restore_best`` (see ``_evaluate.restored``)."""
    return result(_evaluate.restored(carry), record)


HOST_BLOCK_BYTES = 16 * 2**20
"""Rows gathered on the host for one compiled call, when no chunk_size says."""


def _host_block(batch_size, data):
    """Steps whose rows one host read gathers: ``HOST_BLOCK_BYTES`` of them."""
    row_bytes = sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in data)
    return max(1, HOST_BLOCK_BYTES // max(1, row_bytes * batch_size))


def _run_on_host(loop, spec, carry, inputs, block, on_chunk, check_finite, mesh, checkpoint,
                 result):
    """Data read on the host a block of steps at a time (a memmap): each block's
    rows gathered there, then trained as stacked batches; with ``checkpoint``,
    written after every block as an in-memory run's chunks are."""
    if mesh is not None:
        raise ValueError("data read on the host (a np.memmap) runs on one device for now; "
                         "drop mesh, or pass an in-memory array.")

    def in_blocks(run, spec, carry, inputs, *, on_chunk, done=0):
        batches, start = spec.batches, int(carry.step)
        blocks = drivers.gathered_blocks(
            inputs.data, lambda first, length: batches.rows(
                inputs.key, None if inputs.indices is None
                else inputs.indices[first:first + length], start + first, length),
            spec.steps, block, check_finite, batches.padded)
        stacked = dataclasses.replace(spec, batches=_batches.Stacked(batches.batch_size,
                                                                     batches.padded))
        return drivers.run_in_blocks(run, stacked, carry, inputs._replace(key=None, indices=None),
                                     blocks, steps=spec.steps, on_chunk=on_chunk, result=result)

    if checkpoint is not None:
        return drivers.run_with_checkpoints(checkpoint, loop, spec, carry, inputs,
                                            chunk_size=block, on_chunk=on_chunk,
                                            chunks=in_blocks)
    return in_blocks(loop, spec, carry, inputs, on_chunk=on_chunk)


def _fit_stream(loss, params, source, *, lr, steps, optimizer, tol, patience, record_params,
                opt_state, start_step, check_finite, on_chunk, checkpoint, speed, unused):
    """``fit`` on a :func:`~functional_sgd.stream` of batches: blocks of them
    stacked on the host, each trained in one compiled call (``drivers/_blocks.py``);
    with ``checkpoint``, the run's state written after every block."""
    given = [name for name, value in unused.items() if value is not None]
    if given:
        raise ValueError(f"with a stream as data, {', '.join(given)} cannot be used: the "
                         "stream decides the batches, their order and their length (replace, "
                         "drop_last; chunk_size: its block does), the moments of fast_path "
                         "need all the data at once, and a stream trains a plain model on "
                         "one device for now (no rng, state, has_aux, trainable or mesh).")
    if steps is not None:
        steps = _checks.check_int(steps, "steps", minimum=1, maximum=_checks.MAX_STEP)
    check_finite = _checks.check_bool(check_finite, "check_finite")
    params = _model.torch_as_arrays(params)
    lr, lr_schedule = _rate(_checks.check_lr(lr, optimizer, opt_state, params))
    _checks.check_start(start_step, steps or 0, name="start_step")
    stop = _stop.choose(tol, patience)
    if on_chunk is not None and not callable(on_chunk):
        raise TypeError(f"on_chunk must be callable as on_chunk(result); got {on_chunk!r}.")
    record_params = _checks.check_bool(record_params, "record_params")
    if record_params:
        raise ValueError("record_params needs a run of known length; a stream has none.")
    done, saved = (0, None) if checkpoint is None else drivers.saved_run(checkpoint)
    if steps is not None and done >= steps:
        done = steps  # a finished run: its batches are not read
    from_done = callable(source.batches) and not hasattr(source.batches, "__iter__")
    example, batches = drivers.first_batch(
        source.batches(done) if from_done else source.batches, saved)
    loss_out = _checks.check_loss(loss, params, example)
    if steps is not None:
        _checks.check_outputs_fit(_outputs(steps, loss_out, None, None, None))
    _checks.check_opt_state(optimizer, opt_state, params)
    plan = _speed.decide(speed, False, exact_mse=False, params=params, data=example,
                         full_batch=False, steps=1)
    spec = LoopSpec(loss, optimizer, _batches.Stacked(example[0].shape[0]), steps, stop,
                    False, plan, lr_schedule=lr_schedule)
    carry = initialize(spec, params, opt_state, start_step, loss_out.dtype)
    inputs = Inputs((), lr, None, None, tol, patience)

    def in_blocks(run, spec, carry, inputs, *, on_chunk, done=0):
        blocks = drivers.stream_blocks(  # a short batch's loss is a mean over its real rows
            batches, source.block, spec.steps, check_finite, lambda: _checks.check_loss_per_row(
                partial(_checks.check_loss, loss, params), example, "with a short batch"))
        if done:  # resumed: a stream used up ends the run where the checkpoint did
            first = next(blocks, None)
            if first is None:
                return carry, None
            blocks = itertools.chain([first], blocks)
        return drivers.run_in_blocks(run, spec, carry, inputs, blocks, on_chunk=on_chunk)

    asked_to_stop = []  # whether on_chunk ended the run, not the stream
    if on_chunk is not None:
        on_chunk = partial(_noting_stop, on_chunk, asked_to_stop)
    if checkpoint is None:
        carry, record = in_blocks(run, spec, carry, inputs, on_chunk=on_chunk)
    else:
        # The block does not change the bits: a run may resume with another.
        described = {"batch": [f"{a.dtype}{list(a.shape)}" for a in example]}
        carry, record = drivers.run_with_checkpoints(
            checkpoint, run, spec, carry, inputs, chunk_size=source.block, on_chunk=on_chunk,
            chunks=in_blocks, source={"stream": described})
    steps_run = int(record.steps_run)
    if steps is not None and steps_run < steps and not bool(carry.stop.stopped) \
            and not asked_to_stop:
        warnings.warn(f"the stream ended after {steps_run} of steps={steps} batches: fit "
                      f"trained {steps_run} steps (result.steps_run; result.step="
                      f"{int(carry.step)}). Pass steps=None to train until the stream ends.",
                      UserWarning, stacklevel=_checks.caller_stacklevel())
    return fit_result(carry, record)


def _unless(value, default):
    """``None`` for an option left at its default (a NumPy bool counts), else ``value``."""
    same = type(value) in (type(default), np.bool_) and value == default
    return None if same else value


def _noting_stop(on_chunk, asked_to_stop, result):
    """``on_chunk(result)``, noting in ``asked_to_stop`` when it ends the run."""
    stop = on_chunk(result)
    if drivers.asks_to_stop(stop):
        asked_to_stop.append(True)
    return stop
