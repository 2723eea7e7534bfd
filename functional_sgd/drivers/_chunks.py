"""Running the compiled loop in chunks, with a host step between them.

A run of ``spec.steps`` is cut into calls of ``chunk_size`` steps that
continue one another (each hands its ``Carry`` to the next), so the result
has the same bits as one call. Between chunks the host can update a
progress bar or write a checkpoint; within a chunk nothing leaves the device.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Record, Started, fit_result
from ._periods import asks_to_stop, period_means


def run_in_chunks(run, started: Started, *, chunk_size, on_chunk=None):
    """Runs ``started`` (a ``Started``: spec, carry, inputs) in successive
    chunks, each a call of ``run(spec, carry, inputs) -> (Carry, Record)``,
    and joins their records; returns ``(Carry, Record)`` of the run.

    ``on_chunk``, if given, gets each chunk's ``FitResult`` (its losses cover
    the chunk; its ``step`` is the global step after it). The run ends early
    when the stop rule fires, or after a chunk for which ``on_chunk``
    returns ``True``.

    >>> import jax.numpy as jnp
    >>> from functional_sgd.core import Inputs, LoopSpec, initialize, run
    >>> spec = LoopSpec(lambda p: (p ** 2).sum(), steps=10)
    >>> carry = initialize(spec, jnp.array([3.0]), None, 0, jnp.float32)
    >>> inputs = Inputs((), 0.1, None, None, None, None)
    >>> chunked, record = run_in_chunks(run, Started(spec, carry, inputs), chunk_size=4,
    ...                                 on_chunk=lambda r: print(int(r.step), end=" "))
    4 8 10
    >>> bool((chunked.params == run(spec, carry, inputs)[0].params).all())
    True
    """
    spec, carry, inputs = started
    records, done, start = [], 0, int(carry.step)
    while done < spec.steps:
        length = min(chunk_size(done) if callable(chunk_size) else chunk_size,
                     spec.steps - done)
        piece = inputs if inputs.indices is None else inputs._replace(
            indices=inputs.indices[done:done + length])
        carry, record = run(spec.part(done, length), carry, piece)
        records.append(record)
        asked_to_stop = on_chunk is not None and asks_to_stop(
            on_chunk(fit_result(carry, record)))
        done += int(record.steps_run)
        if asked_to_stop or bool(carry.stop.stopped):
            break
    return carry, join(records, spec.steps, spec.record_params, carry.params,
                       eval_count(spec), start)


def eval_count(spec):
    """Evaluations a whole run of ``spec`` makes (0 without ``evaluate``)."""
    return 0 if spec.evaluation is None else spec.evaluation.count(spec.steps)


def join(records, steps, record_params, last_params, evaluations=0, start=0):
    """One record for the whole run, joined on the host: eager device
    concatenation would compile anew for every number of chunks."""
    losses = np.concatenate([np.asarray(r.losses)[:int(r.steps_run)] for r in records])
    aux = jax.tree.map(lambda *paths: on_host(lambda *ps: np.concatenate(
        [p[:int(r.steps_run)] for p, r in zip(ps, records)]), *paths),
        *[r.aux for r in records])
    trajectory = None
    if record_params:
        # Each chunk's path starts where the previous one ended: keep that point once.
        lengths = [jax.tree.leaves(r.trajectory)[0].shape[0] for r in records]
        missing = steps + 1 - (sum(lengths) - len(records) + 1)  # points after a stop

        def whole(last, first, *rest):
            return np.concatenate([first, *(p[1:] for p in rest),
                                   np.broadcast_to(last, (missing,) + last.shape)])

        trajectory = jax.tree.map(lambda last, *paths: on_host(whole, last, *paths),
                                  last_params, *[r.trajectory for r in records])
    cuts = np.cumsum([int(r.steps_run) for r in records])[:-1]
    return record_of(losses, steps, trajectory, aux,
                     Evaluations(evaluations_of(records), evaluations, start, cuts))


def on_host(function, *leaves):
    """``function`` of the leaves' NumPy copies, as a leaf like the first.

    NumPy cannot hold a PRNG key array (a model's frozen key, say): keys go
    as their bits (``jax.random.key_data``) and come back as keys.
    """
    out = function(*(_host(a) for a in leaves))
    if not is_key(leaves[0]):
        return out
    return jax.random.wrap_key_data(out, impl=jax.random.key_impl(leaves[0]))


def _host(a):
    return np.asarray(jax.random.key_data(a) if is_key(a) else a)


def is_key(a):
    """Whether ``a`` is a typed PRNG key array (NumPy cannot hold one)."""
    dtype = getattr(a, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def evaluations_of(records):
    """``(evals, eval_steps)`` of the evaluations the records made, in
    order, on the host (``None`` without ``evaluate``)."""
    if not records or records[0].evals is None:
        return None
    made = [np.asarray(r.eval_steps) >= 0 for r in records]
    eval_steps = np.concatenate([np.asarray(r.eval_steps)[m] for r, m in zip(records, made)])
    evals = {name: np.concatenate([np.asarray(r.evals[name])[m] for r, m in zip(records, made)])
             for name in records[0].evals}
    return evals, eval_steps


DIVERGED_GROWTH = 1e15
"""A finite loss more than this many times ``max(1, |first loss|)`` counts as
diverged: no healthy run grows its loss 1e15-fold, while a diverging one in
float32 or float64 can stay finite for many steps past that."""


def diverged(losses, xp=np):
    """Per step, whether its loss counts as diverged: not finite, or more than
    :data:`DIVERGED_GROWTH` times ``max(1, |losses[0]|)`` (the run's first
    loss, floored at 1 so that a run starting at a loss near 0 may grow).
    ``xp``: ``numpy`` on the host, ``jax.numpy`` inside the loop.

    >>> diverged(np.array([2.0, 1e10, 3e15, np.inf, 1.0])).tolist()
    [False, False, True, True, False]
    """
    # In float16, 1e15 is past the largest value: capped there, no finite loss passes it.
    growth = min(DIVERGED_GROWTH, float(xp.finfo(losses.dtype).max))
    scale = growth * xp.maximum(xp.abs(losses[:1]), 1)
    return ~xp.isfinite(losses) | (xp.abs(losses) > scale)


class Evaluations(NamedTuple):
    """The evaluations a run made, for :func:`record_of`."""

    made: Any  # ``(evals, eval_steps)`` made so far, or None
    slots: int = 0  # the run's evaluation slots (0: a run cut short keeps what it made)
    start: int = 0  # the run's first global step
    cuts: Any = None  # local steps between pieces (None: any period spans one)


def record_of(losses, steps, trajectory=None, aux=None, evaluations=None):
    """The ``Record`` of a run of ``steps`` whose first ``len(losses)`` steps
    ran: losses (and every leaf of ``aux``, stacked over those steps) padded
    with NaN (zeros where the dtype has none), ``steps_run`` and
    ``diverged_at`` read off them (:func:`diverged`); the evaluations made
    (an :class:`Evaluations`) padded to its ``slots`` (eval steps with -1);
    a run cut short by an error (``slots`` 0) keeps the evaluations it made.
    The training means of each period that spans one of the ``cuts``
    between pieces are taken again over the joined losses."""
    made, eval_count, start, cuts = evaluations or Evaluations(None)
    steps_run = losses.shape[0]
    with np.errstate(over="ignore"):  # float16: 1e15 is inf, and nothing finite passes it
        bad = np.flatnonzero(diverged(losses))
    padded, aux = (_padded(tree, steps) for tree in (losses, aux))
    evals = eval_steps = None
    if made is not None:
        made_evals, made_steps = made
        eval_count = max(eval_count, made_steps.shape[0])
        evals = _padded(period_means(made_evals, made_steps, losses, aux, start, cuts),
                        eval_count)
        eval_steps = np.concatenate([made_steps.astype(np.int32), np.full(
            eval_count - made_steps.shape[0], -1, np.int32)])
    # device_put moves host arrays without compiling (jnp.asarray stages a jit per shape).
    return Record(*jax.device_put((padded, np.int32(bad[0] if bad.size else -1),
                                   np.int32(steps_run), trajectory, aux, evals, eval_steps)))


def _padded(tree, length):
    """Every leaf of ``tree`` padded along its leading axis to ``length``
    with NaN (zeros where the dtype has none: the bits of a key too)."""
    return jax.tree.map(lambda leaf: on_host(lambda path: np.concatenate([path, np.full(
        (length - path.shape[0],) + path.shape[1:],
        np.nan if jnp.issubdtype(path.dtype, jnp.inexact) else 0, path.dtype)]), leaf), tree)
