"""Which rows each step sees: batch, mini-batch, stochastic, or a schedule.

Batch, mini-batch and stochastic descent run the same loop; they differ only
in the rows each step sees. Four small objects say which, with one interface
(``batch_size``, ``keyed``, ``rows(key, indices, start, steps)``):

* :class:`FullBatch`: every step sees every row (batch gradient descent);
* :class:`Sampled`: every step draws its rows independently from
  ``fold_in(key, step)`` (the lesson's ``rand_idx``; one row: stochastic);
* :class:`Shuffled`: epochs of shuffled rows, none repeated in an epoch;
* :class:`Schedule`: an explicit ``(steps, batch_size)`` array of rows.

A batch may be short (an epoch of ``n`` rows in batches of ``k`` leaves
``n % k`` rows for its last step, as a data loader with ``drop_last=False``
does): it is padded to ``k`` slots with the row ``-1``, and the objects that
may hold such padding say so (``padded``). :func:`feed` then gives each
step the mask of its real slots ahead of its rows, ``(real, *rows)``, and
the loss is the mean over the real rows (:class:`MaskedMean`).

A keyed schedule is a pure function of ``(key, step)``, so a run cut in two
pieces (``start=0`` then ``start=50``) sees exactly the rows of one run of
100 steps. :func:`feed` decides where the rows are gathered (before the loop,
inside it, or step by step), as the speed plan says.

>>> import jax
>>> rows = Shuffled(n=10, batch_size=5).rows(jax.random.key(0), None, 0, steps=2)
>>> sorted(rows.ravel().tolist()) == list(range(10))
True
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Key
from . import _arguments, _data_checks, _output_size


@dataclasses.dataclass(frozen=True)
class FullBatch:
    """Batch gradient descent: every step sees all the data."""

    batch_size = None
    keyed = False
    padded = False

    def rows(self, key, indices, start, steps):
        return None


@dataclasses.dataclass(frozen=True)
class Sampled:
    """Each step draws ``batch_size`` rows of ``n`` independently, from
    ``fold_in(key, step)``, with replacement across steps (see
    :func:`sample_indices`, ``replace=True``)."""

    n: int
    batch_size: int
    keyed = True
    replace = True
    padded = False

    def rows(self, key, indices, start, steps):
        return _schedule(key, start, n=self.n, steps=steps, batch_size=self.batch_size,
                         replace=self.replace)

    def chunk(self, steps, budget):
        """Steps whose rows are drawn at once, or ``None`` for the whole run."""
        return chunk_steps(self.n, steps, self.batch_size, self.replace, budget)


@dataclasses.dataclass(frozen=True)
class Shuffled(Sampled):
    """Epochs of shuffled rows: epoch ``e`` is a permutation drawn from
    ``fold_in(key, e)``, cut into ``n // batch_size`` batches, or with
    ``drop_last=False`` into ``ceil(n / batch_size)``, the last one padded
    with ``-1`` (see :func:`sample_indices`, ``replace=False``).
    ``drop_last=False`` is only ever set where ``batch_size`` does not
    divide ``n`` (elsewhere it changes nothing), so ``padded`` is it."""

    drop_last: bool = True
    replace = False

    @property
    def padded(self):
        return not self.drop_last

    def rows(self, key, indices, start, steps):
        return _schedule(key, start, n=self.n, steps=steps, batch_size=self.batch_size,
                         replace=False, drop_last=self.drop_last)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """An explicit schedule: step ``t`` sees rows ``indices[t]`` (``-1``:
    a padding slot, when ``padded``)."""

    batch_size: int
    padded: bool = False
    keyed = False

    def rows(self, key, indices, start, steps):
        return indices


@dataclasses.dataclass(frozen=True)
class Stacked:
    """Batches stacked ahead, on the host: each data array holds
    ``(steps, batch_size, ...)`` and step ``t`` sees its row ``t`` (a block
    of a stream, or of rows read from a memmap). When ``padded``, the first
    data array is the ``(steps, batch_size)`` mask of real slots."""

    batch_size: int
    padded: bool = False
    keyed = False

    def rows(self, key, indices, start, steps):
        return None


def choose(n, steps, batch_size, key, indices, replace, drop_last=True):
    """The batches object (and step count) that ``fit``'s arguments ask for,
    after checking they agree."""
    if steps is not None:
        steps = _arguments.check_int(steps, "steps", minimum=1, maximum=_arguments.MAX_STEP)
    if not isinstance(replace, (bool, np.bool_)):
        raise TypeError(f"replace must be True or False; got {replace!r}.")
    if drop_last is not True:
        drop_last = _arguments.check_bool(drop_last, "drop_last")
    if indices is not None:
        if key is not None:
            raise ValueError("pass key or rows=fsgd.Schedule(indices), not both: a schedule "
                             "fixes every batch.")
        padded = _data_checks.check_indices(indices, n, drop_last)
        if steps is not None and steps != indices.shape[0]:
            raise ValueError(
                f"steps={steps} disagrees with the Schedule's indices of shape "
                f"{tuple(indices.shape)}; omit steps or give the schedule as many rows.")
        if batch_size is not None and batch_size != indices.shape[1]:
            raise ValueError(
                f"batch_size={batch_size} disagrees with the Schedule's indices of shape "
                f"{tuple(indices.shape)}; omit batch_size or make them match.")
        return Schedule(int(indices.shape[1]), padded), int(indices.shape[0])
    if steps is None:
        raise TypeError("steps is required (or epochs=, or rows=fsgd.Schedule(indices)), "
                        "e.g. steps=100.")
    if batch_size is None:
        if key is not None:
            raise ValueError(
                "key is given but batch_size is None: full-batch descent draws no rows. "
                "Pass batch_size for mini-batch descent, or drop key.")
        if not drop_last:
            raise ValueError("Shuffled(drop_last=False) needs batch_size and key: with "
                             "batch_size=None every step sees every row. Drop the rows "
                             "option.")
        return FULL_BATCH, steps
    if n is None:
        raise ValueError("batch_size needs data to draw rows from: data is ().")
    batch_size = _arguments.check_int(batch_size, "batch_size", minimum=1)
    if batch_size > n:
        raise ValueError(f"batch_size must be at most n={n} (rows of data); got {batch_size}.")
    _arguments.check_key(key, "key")
    if replace:
        if not drop_last:
            raise ValueError(_NO_EPOCHS)
        return Sampled(n, batch_size), steps
    return Shuffled(n, batch_size, drop_last or n % batch_size == 0), steps


_NO_EPOCHS = ("drop_last=False needs replace=False: with replace=True every step draws its "
              "rows independently, so there are no epochs and no last batch to keep short. "
              "Pass replace=False for shuffled epochs, or drop drop_last.")


FULL_BATCH = FullBatch()


class Feed(NamedTuple):
    """Where a loop's batches come from.

    ``xs`` is what the loop steps over: each step's rows when they are
    gathered in the loop, else ``None`` for the step numbers (``0, 1, ...``
    within the run); ``rows`` is the chunk of drawn rows
    carried between steps (or ``None``), and ``batch_at(x, rows)`` gives
    step ``x``'s batch and the rows to carry on.
    """

    xs: Any
    rows: Any
    batch_at: Callable
    tiny_steps: bool


def feed(batches, data, key, indices, start_step, steps, plan):
    """The :class:`Feed` of a run of ``steps`` from ``start_step`` (traced).

    Tiny steps (one row, say) make a loop that XLA:CPU compiles into one
    kernel, where a row gather costs nanoseconds: those gather in the loop.
    Larger steps run as separate kernels, where a gather a step costs about
    ten times reading a slice of batches gathered up front: those are gathered
    before the loop while they fit in ``plan.pregather_bytes``. A long keyed
    schedule is drawn a chunk at a time, when step ``t`` starts one.

    With padded batches every step's batch is ``(real, *rows)``: the mask of
    its real slots, then its rows (a padding slot reads row 0, a real value
    that the mask leaves out).
    """
    if isinstance(batches, Stacked):
        return Feed(None, None, lambda t, rows: (tuple(a[t] for a in data), rows), False)
    take = _take_padded if batches.padded else _take
    chunk = batches.chunk(steps, plan.schedule_budget) if batches.keyed else None
    if chunk is not None:
        def batch_at(t, rows):
            rows = jax.lax.cond(t % chunk == 0,
                                lambda: batches.rows(key, None, start_step + t, chunk),
                                lambda: rows)
            return take(data, rows[t % chunk]), rows

        rows = jnp.zeros((chunk, batches.batch_size), jnp.int32)
        return Feed(None, rows, batch_at, False)
    indices = batches.rows(key, indices, start_step, steps)
    if indices is None:
        return Feed(None, None, lambda t, rows: (data, rows), False)
    tiny = _gathered_bytes(data, indices[0]) <= plan.tiny_step_bytes
    if tiny or _gathered_bytes(data, indices) > plan.pregather_bytes:
        # Not unrolled: XLA compiles the two steps of an unrolled iteration in
        # other roundings than one, so a chunk of odd length (or odd start) would
        # not give the bits of one call (~10% slower a step for one row on CPU).
        return Feed(indices, None, lambda rows_t, rows: (take(data, rows_t), rows), tiny)
    gathered = take(data, indices)
    return Feed(None, None, lambda t, rows: (tuple(b[t] for b in gathered), rows), False)


def _take(data, rows):
    return tuple(a[rows] for a in data)


def _take_padded(data, rows):
    """``(real, *rows)``: which slots are real (not ``-1``), and the rows."""
    return (rows >= 0,) + _take(data, jnp.maximum(rows, 0))


def _gathered_bytes(data, indices):
    return sum(indices.size * np.prod(a.shape[1:], dtype=int) * a.dtype.itemsize
               for a in data)


def sample_indices(key: Key, n: int, steps: int, batch_size: int, *, replace: bool = True,
                   start: int | jax.Array = 0, drop_last: bool = True) -> jax.Array:
    """Draws the row indices of ``steps`` batches of ``batch_size`` rows.

    ``replace=True`` is the lesson's ``rand_idx``: every step draws its rows
    independently and uniformly from ``range(n)``, with
    ``rows[t] = randint(fold_in(key, start + t), (batch_size,), 0, n)``.

    ``replace=False`` runs epochs of shuffled rows, as a shuffling data loader
    with ``drop_last=True`` does: epoch ``e`` is a permutation of ``range(n)``
    chosen by ``fold_in(key, e)`` (a keyed bijection evaluated row by row, see
    :func:`shuffled_position`: no sort, no ``O(n)`` memory), cut into
    ``n // batch_size`` batches; the ``n % batch_size`` rows left over are
    skipped in that epoch (a different few in every epoch). No row repeats
    within an epoch. With ``drop_last=False`` (as torch's
    ``DataLoader(shuffle=True, drop_last=False)``) an epoch has
    ``ceil(n / batch_size)`` batches and holds every row once: the last
    batch's ``n % batch_size`` rows come first, then ``-1`` pads it to
    ``batch_size`` (``fit`` takes such a step as the mean over its real rows).

    Args:
      key: a ``jax.random`` key.
      n: number of rows to draw from.
      steps: number of batches.
      batch_size: rows per batch, ``1 <= batch_size <= n``.
      replace: see above.
      start: global index of the first step; may be a traced integer.
      drop_last: with ``replace=False``, ``False`` keeps each epoch's short
        last batch (padded with ``-1``); see above.

    Returns:
      An ``int32`` array of shape ``(steps, batch_size)``.

    >>> import jax
    >>> rows = sample_indices(jax.random.key(0), n=10, steps=3, batch_size=5,
    ...                       replace=False)
    >>> rows.shape
    (3, 5)
    >>> sorted(rows[:2].ravel().tolist()) == list(range(10))
    True
    >>> rows = sample_indices(jax.random.key(0), n=7, steps=2, batch_size=5,
    ...                       replace=False, drop_last=False)
    >>> rows[1, 2:].tolist(), sorted(rows.ravel().tolist())[3:] == list(range(7))
    ([-1, -1, -1], True)
    """
    _arguments.check_key(key, "key")
    n = _arguments.check_int(n, "n", minimum=1)
    if n > MAX_ROWS:
        raise ValueError(f"n must be at most 2**31 - 1 = {MAX_ROWS} (rows are numbered in "
                         f"int32); got {n}. Draw rows of a smaller range, or split the data.")
    steps = _arguments.check_int(steps, "steps", minimum=1, maximum=_arguments.MAX_STEP)
    batch_size = _arguments.check_int(batch_size, "batch_size", minimum=1)
    if batch_size > n:
        raise ValueError(f"batch_size must be at most n={n}; got {batch_size}.")
    _arguments.check_start(start, steps)
    replace = _arguments.check_bool(replace, "replace")
    drop_last = _arguments.check_bool(drop_last, "drop_last")
    if replace and not drop_last:
        raise ValueError(_NO_EPOCHS)
    _check_schedule_fits(steps, batch_size)
    return _schedule(key, start, n=n, steps=steps, batch_size=batch_size,
                     replace=replace, drop_last=drop_last or n % batch_size == 0)


MAX_ROWS = 2**31 - 1
"""Rows are numbered in int32 (as JAX indexes by default)."""


def _check_schedule_fits(steps, batch_size):
    """Refuses, before drawing it, a schedule of more int32 indices than half
    this machine's memory holds."""
    needed = steps * batch_size * np.dtype(np.int32).itemsize
    available = _output_size.memory_bytes()
    if needed > available / 2:
        raise ValueError(
            f"sample_indices would return steps * batch_size = {steps} * {batch_size} int32 "
            f"indices ({needed / 2**30:.1f} GiB), more than half this machine's memory "
            f"({available / 2**30:.1f} GiB). Draw fewer steps at a time: the rows of step t "
            "depend only on (key, t), so consecutive calls with start=0, start=k, ... give "
            "the same rows as one call (fit(key=..., batch_size=...) draws them a chunk "
            "at a time).")


def chunk_steps(n, steps, batch_size, replace, budget):
    """Steps whose rows ``fit`` draws at once, or ``None`` to draw the whole schedule.

    A schedule of ``steps * batch_size`` indices above ``budget`` is
    drawn a chunk at a time. The rows of step ``t`` depend only on
    ``(key, t)``: chunked or not, they are the bits :func:`sample_indices`
    gives.
    """
    if steps * batch_size <= budget:
        return None
    return min(max(1, budget // batch_size), steps)


def steps_per_epoch(n, batch_size, drop_last=True):
    """Batches of ``batch_size`` in an epoch of ``n`` rows: ``n // batch_size``,
    or with ``drop_last=False`` ``ceil(n / batch_size)`` (the last one short)."""
    return n // batch_size if drop_last else -(-n // batch_size)


def walks_each_step():
    """Whether a shuffled schedule's cycle-walks run one step at a time
    (``lax.map``): on CPU each step's walk then ends with its own rows. On
    a GPU every round of a ``while_loop`` waits for the host to read its
    condition, so there the whole schedule walks at once (``vmap``: one
    loop, as many rounds as the longest walk). The rows are the same bits
    either way: each position is walked until it lands in ``range(n)``.
    Read from the default backend when the schedule is traced (keys placed
    on a GPU machine's CPU device walk as on the GPU: only speed differs)."""
    return jax.default_backend() == "cpu"


@partial(jax.jit, static_argnames=("n", "steps", "batch_size", "replace", "drop_last"))
def _schedule(key, start, *, n, steps, batch_size, replace, drop_last=True):
    step_ids = jnp.asarray(start, jnp.int32) + jnp.arange(steps, dtype=jnp.int32)
    if replace:
        draw = lambda t: jax.random.randint(
            jax.random.fold_in(key, t), (batch_size,), 0, n, dtype=jnp.int32)
        return jax.vmap(draw)(step_ids)
    per_epoch = steps_per_epoch(n, batch_size, drop_last)
    epochs = step_ids // per_epoch
    # Positions reach n + batch_size - 2, past int32 when n is near 2**31: uint32.
    positions = ((step_ids % per_epoch).astype(jnp.uint32)[:, None] * jnp.uint32(batch_size)
                 + jnp.arange(batch_size, dtype=jnp.uint32)[None, :])
    round_keys = jax.vmap(lambda e: jax.random.bits(
        jax.random.fold_in(key, e), (FEISTEL_ROUNDS,), jnp.uint32))(epochs)
    return shuffled_rows(positions, round_keys, n, drop_last, walks_each_step())


def shuffled_rows(positions, round_keys, n, drop_last, each_step):
    """Rows at ``positions`` (``(steps, batch_size)``) of the epochs whose
    permutations ``round_keys`` (one row per step) choose: step by step
    (``lax.map``) when ``each_step``, else all at once (``vmap``); the same
    bits either way."""

    def step_rows(position, keys):
        if drop_last:
            return shuffled_position(position, keys, n)
        # Positions past the epoch's n rows are padding: -1 (each permuted as
        # position 0, so the bijection only ever sees range(n)).
        real = position < n
        return jnp.where(real, shuffled_position(jnp.where(real, position, 0), keys, n), -1)

    # Step by step on CPU, so each step's cycle-walk ends with its own rows, not
    # with the slowest row of the whole schedule (faster there on an epoch of
    # 1,562 batches of 64 from 1e5 rows); all at once elsewhere.
    if each_step:
        return jax.lax.map(lambda pk: step_rows(*pk), (positions, round_keys))
    return jax.vmap(step_rows)(positions, round_keys)


FEISTEL_ROUNDS = 32
"""Round keys drawn per epoch: the most rounds :func:`feistel_rounds` asks for."""


def feistel_rounds(bits):
    """Rounds of the Feistel network on ``range(2**bits)``. Four make a
    pseudo-random permutation in theory, for wide halves; narrow halves need
    more: on epochs of 6 rows (3 bits) 8 rounds paired neighbouring rows 4x
    too unevenly (chi-square per degree of freedom 4.2, over 9000 epochs),
    16 or more did not (0.7-1.2); from 8 bits on, 8 rounds are plenty.

    >>> [feistel_rounds(b) for b in (2, 3, 6, 8, 31)]
    [26, 23, 14, 8, 8]
    """
    return max(8, 32 - 3 * bits)


def shuffled_position(position, round_keys, n):
    """Row at ``position`` of the epoch whose permutation ``round_keys`` choose.

    A keyed bijection of ``range(n)`` evaluated per element, not a sort: a
    Feistel network permutes ``range(2**k)``, the smallest such range holding
    ``n`` (its halves ``ceil(k/2)`` and ``floor(k/2)`` bits, swapping widths
    each round), and positions it maps to ``n`` or beyond are mapped again
    until they land inside (cycle-walking: fewer than 2 rounds on average,
    since ``2**k < 2 n``). The result is a permutation of ``range(n)`` for
    every key: no row repeats within an epoch, and each step costs only its
    own rows, whatever ``n`` is (up to ``2**31 - 1``).

    >>> import jax, jax.numpy as jnp
    >>> keys = jax.random.bits(jax.random.key(0), (FEISTEL_ROUNDS,), jnp.uint32)
    >>> rows = shuffled_position(jnp.arange(10, dtype=jnp.int32), keys, 10)
    >>> sorted(rows.tolist()) == list(range(10))
    True
    """
    bits = max(2, (n - 1).bit_length())

    def permute(x):
        high, low = (bits + 1) // 2, bits // 2  # x = (left: high bits, right: low bits)
        for i in range(feistel_rounds(bits)):
            left, right = x >> low, x & jnp.uint32((1 << low) - 1)
            mixed = _mix(right ^ round_keys[i]) & jnp.uint32((1 << high) - 1)
            x = (right << high) | (left ^ mixed)
            high, low = low, high
        return x

    x = permute(position.astype(jnp.uint32))
    x = jax.lax.while_loop(lambda x: jnp.any(x >= n),
                           lambda x: jnp.where(x >= n, permute(x), x), x)
    return x.astype(jnp.int32)


def _mix(x):
    """A 32-bit integer hash (MurmurHash3's finalizer): every input bit
    changes about half the output bits."""
    x ^= x >> 16
    x *= jnp.uint32(0x85EBCA6B)
    x ^= x >> 13
    x *= jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)
