"""The training loop: the lesson's seven steps in one compiled call.

1. initialize  -- the caller's ``params`` (and ``optimizer.init``)
2. predict     -- inside ``loss``, e.g. :func:`linear`
3. loss        -- ``loss(params, *batch)``, e.g. :func:`mse`
4. gradient    -- :func:`gradient`, ``jax.value_and_grad`` of the loss
5. step        -- :func:`sgd_update`, ``p <- p - lr * g`` (or an optax optimizer)
6. repeat      -- ``jax.lax.scan`` over the schedule of batches
7. stop        -- after ``steps``, or earlier by ``tol`` / ``patience``
                  (then ``jax.lax.while_loop``)

Batch, mini-batch and stochastic descent share :func:`_train_step`; only the
rows each step sees differ.
"""

import functools
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ..drivers import _checkpoint
from ..drivers import _mesh as _parallel
from ..speed import _layout
from ..speed import _moments as _fastpath
from ..drivers._chunks import run_in_chunks
from ._batches import _schedule, chunk_steps


class FitResult(NamedTuple):
    """What :func:`fit` returns (a pytree, so it passes through ``jit``/``vmap``).

    Attributes:
      params: the parameters after the last update.
      losses: ``(steps,)``; ``losses[t]`` is the loss of step ``t``'s batch,
        before that step's update. Steps not run (stop rule) hold NaN.
      diverged_at: first step whose loss is not finite, ``-1`` if none.
      steps_run: number of updates made (``steps`` unless a stop rule fired).
      step: global step count after the run; pass it as ``start_step`` (with
        ``opt_state``) to continue the run.
      opt_state: the optimizer's state, ``None`` for plain SGD.
      trajectory: with ``record_params=True``, the params before every step
        and after the last, stacked on a leading axis of ``steps + 1``;
        otherwise ``None``.
    """

    params: Any
    losses: jax.Array
    diverged_at: jax.Array
    steps_run: jax.Array
    step: jax.Array
    opt_state: Any
    trajectory: Any = None


def gradient(loss, params, *batch):
    """Step 4: the loss and its gradient with respect to ``params``.

    >>> import jax.numpy as jnp
    >>> gradient(lambda x: (x ** 2).sum(), jnp.array([3.0, 4.0, 10.0]))
    (Array(125., dtype=float32), Array([ 6.,  8., 20.], dtype=float32))
    """
    return jax.value_and_grad(loss)(params, *batch)


def sgd_update(params, grads, lr):
    """Step 5: ``p <- p - lr * g`` for every leaf, kept in the leaf's dtype.

    ``lr`` is cast to each parameter's dtype first, as torch's
    ``p.sub_(lr * p.grad)`` computes in the parameter's precision.

    >>> import jax.numpy as jnp
    >>> sgd_update(jnp.array([1.0, 2.0]), jnp.array([10.0, -10.0]), 0.1)
    Array([0., 3.], dtype=float32)
    """
    return jax.tree.map(lambda p, g: p - jnp.asarray(lr, p.dtype) * g, params, grads)


def fit(loss, params, data=(), *, lr=None, steps=None, batch_size=None, key=None,
        indices=None, optimizer=None, replace=True, tol=None, patience=None,
        record_params=False, opt_state=None, start_step=0, check_finite=True,
        chunk_size=None, on_chunk=None, mesh=None, checkpoint=None, fast_path="auto"):
    """Fits ``params`` by gradient descent on ``loss``, in one compiled call.

    Each step ``t`` takes a batch ``B_t`` of rows and applies
    ``p <- p - lr * grad L_{B_t}(p)`` (or the given optax optimizer), where
    ``L_B(p) = loss(p, *(a[B] for a in data))``.

    * ``batch_size=None``: batch gradient descent, every step sees all rows;
    * ``batch_size=k`` with ``key``: mini-batch descent, ``k`` random rows
      a step (see :func:`sample_indices` for ``replace``);
    * ``batch_size=1`` with ``key``: stochastic descent, one row a step;
    * ``indices`` of shape ``(steps, batch_size)``: an explicit schedule.

    ``lr``, ``key``, ``params``, ``data``, ``tol``, ``patience`` and
    ``start_step`` are traced: a new learning rate or new data of the same
    shape reuses the compiled loop, and ``jax.vmap(fit)`` over any of them is
    a sweep. ``loss``, ``optimizer``, ``steps`` and ``batch_size`` shape the
    program: changing them compiles again (so define ``loss`` once, not as a
    fresh ``lambda`` per call).

    Args:
      loss: ``loss(params, *batch) -> scalar``.
      params: initial parameters, any pytree of arrays (NumPy or JAX).
      data: tuple of arrays sharing their leading axis ``n``, or ``()``.
        Like all JAX inputs, float64 NumPy data becomes float32 unless
        ``jax_enable_x64`` is on.
      lr: learning rate ``> 0``; required unless ``optimizer`` is given.
      steps: number of updates; may be omitted when ``indices`` is given.
      batch_size: rows per step, ``1 <= batch_size <= n``; ``None`` for all.
      key: ``jax.random`` key for drawing batches; required with
        ``batch_size``. Step ``t`` draws from ``fold_in(key, t)``.
      indices: explicit ``(steps, batch_size)`` integer schedule.
      optimizer: an optax ``GradientTransformation`` used instead of plain SGD.
      replace: with ``key``: ``True`` draws every step's rows independently
        (the lesson's ``rand_idx``), ``False`` runs shuffled epochs.
      tol: stop once a step's loss is ``<= tol``.
      patience: stop once the best loss has not improved for this many steps.
        With either stop rule, a non-finite loss also stops the run.
      record_params: also return the parameter trajectory.
      opt_state: optimizer state to continue from (``result.opt_state``).
      start_step: global index of the first step (``result.step`` to
        continue); it selects the batches drawn from ``key``.
      check_finite: refuse data containing NaN or inf. NumPy arrays are
        checked on every call (they can be written to); a JAX array, whose
        values never change, only the first time ``fit`` sees it.
      chunk_size: run the loop as compiled chunks of this many steps, with a
        host step between chunks (for progress bars and checkpoints). The
        result has the same bits as one call; each chunk syncs once.
      on_chunk: called after each chunk with that chunk's :class:`FitResult`
        (its ``losses`` cover the chunk; ``step`` is the global step after
        it). Needs ``chunk_size``.
      mesh: a ``jax.sharding.Mesh``: run data-parallel, rows of ``data``
        sharded over all its axes, params replicated, gradients all-reduced
        every step (the same result as one device, up to the order of
        additions). ``loss`` must be a mean over the rows of its batch.
      checkpoint: a file path: after every chunk the run's state is written
        there atomically, and a run started again with the same arguments
        resumes from it with the same bits. Needs ``chunk_size``.
      fast_path: ``"auto"``, ``True`` or ``False``. Full-batch descent on
        ``linear_mse`` (by identity) with data ``(x, y)`` and one params
        array can run from sufficient statistics (``XᵀX`` and friends, one
        pass over the data, then ``O(d²)`` a step; see ``_fastpath``), with
        any optimizer and any float dtype. ``"auto"`` uses it where it
        applies and is cheaper (``d <= 2 * steps`` and ``steps * n * d >= 1e5``);
        ``True`` insists (and says why it cannot); ``False`` always runs the
        plain loop.

    Returns:
      A :class:`FitResult`.

    >>> import jax, jax.numpy as jnp
    >>> from functional_sgd import fit, lesson_data, linear_mse
    >>> x, y = lesson_data(jax.random.key(0))
    >>> result = fit(linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100)
    >>> bool(result.losses[-1] < 0.1 < result.losses[0])
    True
    >>> [round(float(a), 1) for a in result.params]
    [3.1, 2.4]
    """
    data, n = _checks.check_data(data, check_finite)
    lr = _checks.check_lr(lr, optimizer)
    batch_size, steps = _check_schedule(data, n, steps, batch_size, key, indices)
    _checks.check_start(start_step)
    if tol is not None and _checks.is_concrete(tol) and not jnp.isfinite(tol):
        raise ValueError(f"tol must be a finite number; got {tol}.")
    if patience is not None and _checks.is_concrete(patience):
        _checks.check_int(patience, "patience", minimum=1)
    batch = data if batch_size is None else tuple(
        jax.ShapeDtypeStruct((batch_size,) + tuple(a.shape[1:]), jnp.result_type(a))
        for a in data)
    loss_spec = _checks.check_loss(loss, params, batch)
    # Typed scalars, so a first call and a continuation (device int32) share one compile.
    start_step = np.int32(start_step) if _checks.is_concrete(start_step) else start_step
    stop_start = StopState(np.array(np.inf, loss_spec.dtype), np.int32(0), np.bool_(False))
    static = dict(loss=loss, optimizer=optimizer, batch_size=batch_size,
                  replace=bool(replace), use_tol=tol is not None,
                  use_patience=patience is not None, record_params=bool(record_params),
                  fast_path=_fastpath.choose(fast_path, loss, params, data, batch_size, steps,
                                             mesh))
    loop = _fit_loop if mesh is None else _parallel.data_parallel(_fit_loop, mesh, loss,
                                                                  params, data)
    if chunk_size is None:
        if on_chunk is not None:
            raise ValueError("on_chunk needs chunk_size: pass e.g. chunk_size=1000.")
        if checkpoint is not None:
            raise ValueError("checkpoint needs chunk_size: the state is written after "
                             "every chunk; pass e.g. chunk_size=1000.")
        result, _ = loop(params, data, lr, key, indices, opt_state, start_step, tol,
                         patience, stop_start, steps=steps, **static)
        return result
    chunk_size = _checks.check_int(chunk_size, "chunk_size", minimum=1)
    if not all(map(_checks.is_concrete, jax.tree.leaves((params, data, lr, start_step)))):
        raise ValueError("chunk_size runs a host loop between chunks, so fit cannot be "
                         "traced by jax.jit or jax.vmap with it; drop chunk_size there.")
    run_chunk = partial(loop, data=data, lr=lr, key=key, tol=tol, patience=patience,
                        **static)
    if checkpoint is not None:
        return _checkpoint.run_with_checkpoints(
            checkpoint, run_chunk, params, opt_state, start_step, indices, stop_start,
            steps=steps, chunk_size=chunk_size, on_chunk=on_chunk,
            record_params=bool(record_params), run=dict(
                data=data, lr=lr, key=key, tol=tol, patience=patience,
                batch_size=batch_size, replace=bool(replace), optimizer=optimizer))
    return run_in_chunks(run_chunk, params, opt_state, start_step, indices, stop_start,
                         steps=steps,
                         chunk_size=chunk_size, on_chunk=on_chunk,
                         record_params=bool(record_params))


def _check_schedule(data, n, steps, batch_size, key, indices):
    """Returns ``(batch_size, steps)``; batch_size None means full batch."""
    if steps is not None:
        steps = _checks.check_int(steps, "steps", minimum=1)
    if indices is not None:
        if key is not None:
            raise ValueError("pass key or indices, not both: indices fix every batch.")
        _checks.check_indices(indices, n)
        if steps is not None and steps != indices.shape[0]:
            raise ValueError(
                f"steps={steps} disagrees with indices of shape {tuple(indices.shape)}; "
                "omit steps or pass as many rows of indices.")
        if batch_size is not None and batch_size != indices.shape[1]:
            raise ValueError(
                f"batch_size={batch_size} disagrees with indices of shape "
                f"{tuple(indices.shape)}; omit batch_size or make them match.")
        return int(indices.shape[1]), int(indices.shape[0])
    if steps is None:
        raise TypeError("steps is required (or pass an indices schedule), e.g. steps=100.")
    if batch_size is None:
        if key is not None:
            raise ValueError(
                "key is given but batch_size is None: full-batch descent draws no rows. "
                "Pass batch_size for mini-batch descent, or drop key.")
        return None, steps
    if n is None:
        raise ValueError("batch_size needs data to draw rows from: data is ().")
    batch_size = _checks.check_int(batch_size, "batch_size", minimum=1)
    if batch_size > n:
        raise ValueError(f"batch_size must be at most n={n} (rows of data); got {batch_size}.")
    _checks.check_key(key, "key")
    return batch_size, steps


PREGATHER_BYTES = 64 * 2**20
"""Largest copy of the scheduled rows (``steps x batch_size`` rows of every
data array) gathered before the loop; longer schedules gather step by step."""


TINY_STEP_BYTES = 256
"""Steps whose rows take at most this many bytes gather them inside the loop."""


def _gathered_bytes(data, indices):
    return sum(indices.size * np.prod(a.shape[1:], dtype=int) * a.dtype.itemsize
               for a in data)


class StopState(NamedTuple):
    """The stop rule's memory: best loss so far, steps since it, whether it fired."""

    best: Any
    waited: Any
    stopped: Any



def _fit_loop(params, data, lr, key, indices, opt_state, start_step, tol, patience,
              stop_state, *, steps, **static):
    """The compiled loop; returns ``(FitResult, StopState)``.

    What the program would only copy through (the stop state without a stop
    rule, ``steps_run = steps``, ``step = start_step + steps``) is filled in
    here instead: every extra output is another task for XLA:CPU's runtime,
    and on the lesson they cost a quarter of the call.
    """
    args = (params, data, lr, key, indices, opt_state, start_step, tol, patience, stop_state)
    try:
        outputs = _compiled_loop(*args, steps=steps, **static)
    except ValueError as error:  # inside another jit, whose own options apply
        if "compiler_options" not in str(error):
            raise
        outputs = _nested_loop(*args, steps=steps, **static)
    params, losses, diverged_at, steps_run, opt_state, trajectory, new_stop = outputs
    if steps_run is None:
        steps_run = _int32_constant(steps)
        step = (_int32_constant(int(start_step) + steps)
                if isinstance(start_step, (int, np.integer)) else start_step + steps_run)
    else:
        step = start_step + steps_run
    result = FitResult(params, losses, diverged_at, steps_run, step, opt_state, trajectory)
    return result, stop_state if new_stop is None else new_stop


@functools.lru_cache(maxsize=256)
def _int32_constant(value):
    """One device scalar per value (JAX arrays are immutable, so sharing is safe)."""
    with jax.ensure_compile_time_eval():
        return jnp.asarray(value, jnp.int32)


def _loop(params, data, lr, key, indices, opt_state, start_step, tol, patience,
          stop_state, *, loss, optimizer, steps, batch_size, replace, use_tol,
          use_patience, record_params, fast_path=False):
    """The loop itself: ``(params, losses, diverged_at, steps_run, opt_state,
    trajectory, stop_state)``, with ``steps_run`` and ``stop_state`` ``None``
    when no stop rule can end the run early."""
    start_step = jnp.asarray(start_step, jnp.int32)
    if fast_path:  # every full batch is the same: its moments stand in for the data
        loss, data = _fastpath.quadratic_mse, (_fastpath.moments(*data),)
    elif key is None and indices is None and data:  # full batch: a layout for fast matmuls
        loss, data = _layout.column_major(loss, params, data)
    n = data[0].shape[0] if key is not None else None
    chunk = None if key is None else chunk_steps(n, steps, batch_size, replace)
    draw = partial(_schedule, key, n=n, batch_size=batch_size, replace=replace)
    if key is not None and chunk is None:
        indices = draw(start_step, steps=steps)
    if optimizer is not None and opt_state is None:
        opt_state = optimizer.init(params)
    train_step = partial(_train_step, loss, optimizer, lr)
    # A long keyed schedule is carried a chunk at a time, drawn when step t starts one.
    rows = None if chunk is None else jnp.zeros((chunk, batch_size), jnp.int32)
    # Where step t's rows come from. Tiny steps (one row, say) make a loop that
    # XLA:CPU compiles into one kernel, where a row gather costs nanoseconds:
    # those gather in the loop. Larger steps run as separate kernels, where a
    # gather costs ~3 us a step and a slice of batches gathered up front ~0.3 us.
    tiny_steps = indices is not None and _gathered_bytes(data, indices[0]) <= TINY_STEP_BYTES
    batches = rows_per_step = None
    if indices is not None:
        if tiny_steps or _gathered_bytes(data, indices) > PREGATHER_BYTES:
            rows_per_step = indices
        else:
            batches = tuple(a[indices] for a in data)

    def batch_at(t, rows):
        """Step t's batch (``t`` is the step's rows when they are gathered in
        the loop), and the chunk of rows carried to the next step."""
        if chunk is not None:
            rows = jax.lax.cond(t % chunk == 0, lambda: draw(start_step + t, steps=chunk),
                                lambda: rows)
            return tuple(a[rows[t % chunk]] for a in data), rows
        if batches is not None:
            return tuple(b[t] for b in batches), rows
        return (data if rows_per_step is None else tuple(a[t] for a in data)), rows

    if use_tol or use_patience:
        at = batch_at if rows_per_step is None else (
            lambda t, rows: batch_at(rows_per_step[t], rows))
        params, opt_state, losses, trajectory, steps_run, stop_state = _run_until_stop(
            train_step, at, rows, params, opt_state, tol, patience, stop_state,
            steps=steps, use_tol=use_tol, use_patience=use_patience,
            record_params=record_params)
    else:
        def body(carry, t):
            params, opt_state, rows = carry
            batch, rows = batch_at(t, rows)
            value, new_params, opt_state = train_step(params, opt_state, batch)
            return (new_params, opt_state, rows), (value, params if record_params else None)

        step_inputs = (jnp.arange(steps, dtype=jnp.int32) if rows_per_step is None
                       else rows_per_step)
        # Unrolling by two halves the loop overhead of tiny steps (10% per sample).
        (params, opt_state, _), (losses, trajectory) = jax.lax.scan(
            body, (params, opt_state, rows), step_inputs, unroll=2 if tiny_steps else 1)
        steps_run = stop_state = None
        if record_params:
            trajectory = jax.tree.map(
                lambda path, last: jnp.concatenate([path, last[None]]), trajectory, params)
    return (params, losses, _first_bad(losses, steps_run), steps_run, opt_state, trajectory,
            stop_state)


_STATIC = ("loss", "optimizer", "steps", "batch_size", "replace", "use_tol", "use_patience",
           "record_params", "fast_path")
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}
"""Lets XLA:CPU drop a copy of the step counter, so a small step runs as one
sequence of kernels instead of a graph spread over threads (the lesson's loop:
122 -> 90 us, median of 30). Other backends ignore XLA:CPU's options."""
_compiled_loop = jax.jit(_loop, static_argnames=_STATIC, compiler_options=CPU_COMPILER_OPTIONS)
_nested_loop = jax.jit(_loop, static_argnames=_STATIC)  # options apply only at the top


LONG_RUN = 4096
"""From this many steps, ``diverged_at`` first asks whether any loss is bad:
XLA:CPU's ``argmax`` over 2e5 losses takes ~0.2 ms, the question ~0.05 ms."""


def _first_bad(losses, steps_run):
    """Index of the first non-finite loss among the steps run, ``-1`` if none.

    ``argmax`` finds the first bad step (or 0 when none is bad) in one
    reduction; XLA:CPU runs this as two kernels where ``any`` + ``argmax``
    took four, which keeps the lesson's program small enough to run in
    sequence. Long runs skip the ``argmax`` unless a loss is bad."""
    bad = ~jnp.isfinite(losses)
    if steps_run is not None:
        bad &= jnp.arange(losses.shape[0], dtype=jnp.int32) < steps_run

    def first():
        i = jnp.argmax(bad).astype(jnp.int32)
        return jnp.where(bad[i], i, -1)

    if losses.shape[0] < LONG_RUN:
        return first()
    return jax.lax.cond(bad.any(), first, lambda: jnp.int32(-1))


def _train_step(loss, optimizer, lr, params, opt_state, batch):
    """Steps 2-5 on one batch: predict, loss, gradient, update."""
    value, grads = gradient(loss, params, *batch)
    if optimizer is None:
        return value, sgd_update(params, grads, lr), opt_state
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return value, params, opt_state


def _run_until_stop(train_step, batch_at, rows, params, opt_state, tol, patience, stop_state,
                    *, steps, use_tol, use_patience, record_params):
    """Step 7 on the device: a while loop that ends at ``steps`` or when a rule fires."""
    value_spec = jax.eval_shape(
        lambda: train_step(params, opt_state, batch_at(jnp.int32(0), rows)[0])[0])
    losses = jnp.full((steps,), jnp.nan, value_spec.dtype)
    trajectory = jax.tree.map(
        lambda p: jnp.zeros((steps + 1,) + jnp.shape(p), jnp.result_type(p)), params) \
        if record_params else None

    def keep_going(carry):
        t, done = carry[0], carry[1]
        return (t < steps) & ~done

    def body(carry):
        t, _, params, opt_state, losses, trajectory, best, waited, rows = carry
        if record_params:
            trajectory = jax.tree.map(lambda path, p: path.at[t].set(p), trajectory, params)
        batch, rows = batch_at(t, rows)
        value, params, opt_state = train_step(params, opt_state, batch)
        losses = losses.at[t].set(value)
        done = ~jnp.isfinite(value)
        improved = value < best
        best = jnp.where(improved, value, best)
        waited = jnp.where(improved, 0, waited + 1)
        if use_tol:
            done |= value <= tol
        if use_patience:
            done |= waited >= patience
        return t + 1, done, params, opt_state, losses, trajectory, best, waited, rows

    carry = (jnp.int32(0), jnp.bool_(False), params, opt_state, losses, trajectory,
             jnp.asarray(stop_state.best, value_spec.dtype),
             jnp.asarray(stop_state.waited, jnp.int32), rows)
    t, stopped, params, opt_state, losses, trajectory, best, waited, _ = jax.lax.while_loop(
        keep_going, body, carry)
    if record_params:  # steps after the stop hold the final params
        after = jnp.arange(steps + 1, dtype=jnp.int32) >= t
        trajectory = jax.tree.map(
            lambda path, p: jnp.where(after.reshape((-1,) + (1,) * p.ndim), p, path),
            trajectory, params)
    return params, opt_state, losses, trajectory, t, StopState(best, waited, stopped)
