"""Data read on the host a block of steps at a time: streams and arrays too
large to copy whole (a ``np.memmap``).

The loop runs one compiled call per block of steps, on that block's batches
stacked ahead (``(steps, batch_size, ...)``, step ``t`` reading row ``t``).
While a block trains, the next one is read and copied: JAX returns from a
compiled call before the device is done, so reading the next block on the
host overlaps with the training of this one, without threads; the host waits
for a block's results only after the next block is ready. A block goes to
the compiled call as host arrays, which the call copies in: an explicit
``jax.device_put`` first was slower (one more dispatch a block).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._types import fit_result
from ._chunks import eval_count, join
from ._periods import asks_to_stop
from ._rows import row_reader


class Stream:
    """An iterable of batches as ``fit``'s data (see :func:`stream`)."""

    def __init__(self, batches, block):
        self.batches = batches
        self.block = block

    def __repr__(self):
        return f"stream({type(self.batches).__name__}, block={self.block})"


def stream(batches: Iterable[Any] | Callable[[int], Iterable[Any]], *,
           block: int = 256) -> Stream:
    """Trains on any iterable of batches: ``fit(loss, params, stream(loader), lr=...)``.

    Args:
      batches: an iterable of batches, or a function ``done -> iterable``
        (see below).
      block: batches stacked on the host and trained in one compiled call.

    Returns:
      A ``Stream``, to pass as ``fit``'s ``data``.

    Each batch is a tuple of arrays sharing their leading axis (NumPy, JAX or
    CPU torch tensors: a torch ``DataLoader``, a generator, a grain loader),
    or one array. ``fit`` stacks ``block`` batches on the host, trains them
    in one compiled call, and reads the next block while that call runs.
    Each batch is copied as it is taken, before the next is asked for, so a
    loader may reuse its buffers for the next batch (as a for loop allows).
    ``steps=None`` trains until the iterable ends; a stream that ends before
    ``steps`` batches trains what it held and warns (``result.steps_run``
    and ``result.step`` say where it ended). ``replace``, ``drop_last`` and
    ``fast_path`` are refused with a stream: its batches are its own. Every
    batch must have at least one row and the first batch's shapes, or
    fewer rows: a short batch (the last one of a
    ``DataLoader(drop_last=False)``) is taken as its real rows, as
    ``fit(rows=Shuffled(drop_last=False))`` takes a short batch: the mean over
    them, so the loss must be a mean over rows.

    A stream is read once, from where it stands. ``on_chunk`` sees each
    block's result. With ``run=Run(checkpoint=path)`` the run's state is written after
    every block, and a run started again resumes from it with the bits of
    one uninterrupted run, if its stream yields the batches from the
    checkpoint's step on: pass an iterator positioned there, or pass as
    ``batches`` a function ``done -> iterable`` that ``fit`` calls with the
    number of batches the checkpoint holds (0 on a fresh run), e.g.
    ``lambda done: itertools.islice(batches_of_epoch(seed), done, None)``.
    Continuing a run by hand works the same way, with ``start_step`` and
    ``opt_state`` from the last result.

    An error while reading the stream (a batch of other shapes, the loader's
    own error, a ``KeyboardInterrupt``) after some blocks trained is raised
    with ``error.result``: the result of the steps trained before it.

    >>> import numpy as np, jax.numpy as jnp
    >>> import functional_sgd as fsgd
    >>> x = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)
    >>> y = x @ np.array([3.0, 2.0], np.float32)
    >>> loader = ((x[i:i + 10], y[i:i + 10]) for i in range(0, 1000, 10))
    >>> result = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), fsgd.stream(loader, block=32),
    ...                   lr=0.1)
    >>> int(result.steps_run), [round(float(a), 2) for a in result.params]
    (100, [3.0, 2.0])
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1 (batches per compiled call); got {block!r}.")
    if not hasattr(batches, "__iter__") and not callable(batches):
        raise TypeError("stream needs an iterable of batches (or a function done -> "
                        f"iterable); got {type(batches).__name__}.")
    return Stream(batches, block)


def run_in_blocks(run, started, blocks, *, steps=None, on_chunk=None, result=fit_result):
    """Runs ``started`` (a ``Started`` whose spec's batches are stacked) on
    each ``(data, steps, padded)`` of ``blocks`` in turn; returns ``(Carry,
    Record)`` of the whole run. A padded block's data starts with the mask
    of real slots.

    ``steps`` is the run's length when known (losses of steps a stop rule
    skipped are NaN); ``None`` for as many as the blocks hold.

    An error reading a block (a bad batch, the loader's own) keeps what was
    trained before it: the error is raised with ``error.result``, the
    ``result(carry, record)`` of the blocks done (a ``FitResult``).
    """
    spec, carry, inputs = started
    records, done, start = [], 0, int(carry.step)
    blocks = iter(blocks)
    ahead = _next_block(blocks, carry, records, spec, result)
    while ahead is not None:
        data, length, padded = ahead  # host arrays: the call copies them in (cheaper than device_put)
        piece = spec.part(done, length)  # a stream's evaluation periods count from its start
        piece = dataclasses.replace(piece, batches=dataclasses.replace(piece.batches,
                                                                       padded=padded))
        carry, record = run(piece, carry, inputs._replace(data=data))
        records.append(record)
        ahead = _next_block(blocks, carry, records, spec, result)  # read while it trains
        done += int(record.steps_run)
        if not spec.stop.active:  # the step is known on the host: keep it there
            carry = carry._replace(step=np.int32(carry.step))
        asked_to_stop = on_chunk is not None and asks_to_stop(
            on_chunk(fit_result(carry, record)))
        if asked_to_stop or bool(carry.stop.stopped):
            break
    if not records:
        raise ValueError("data yielded no batches: the stream was empty.")
    return carry, join(records, done if steps is None else steps, spec.record_params,
                       carry.params, 0 if steps is None else eval_count(spec), start)


def _next_block(blocks, carry, records, spec, result):
    try:
        return next(blocks, None)
    except (Exception, KeyboardInterrupt) as error:  # Ctrl-C while the stream reads too
        if records:
            done = sum(int(r.steps_run) for r in records)
            error.result = result(carry, join(records, done, spec.record_params, carry.params))
            if hasattr(error, "add_note"):
                error.add_note(
                    f"fit trained {done} steps before this error: error.result holds them "
                    f"(params, opt_state; continue with run=fsgd.Run.after(error.result), "
                    f"from step {int(carry.step)}).")
        raise


def gathered_blocks(data, rows_of, steps, block, check_finite, padded=False):
    """``(data block, steps, padded)`` for each block of ``steps``: the rows
    ``rows_of(start, length)`` names, read from ``data`` on the host. A
    memmap's rows are read from its file (``_rows``), so its pages never count
    in this process's memory. With ``padded``, rows may hold ``-1`` (padding)
    and the block starts with the mask of real slots (``rows >= 0``); a
    padding slot reads row 0.

    The finite check reads each block once, as it is gathered.
    """
    readers = [row_reader(a, f"data[{i}]") for i, a in enumerate(data)]
    try:
        for start in range(0, steps, block):
            length = min(block, steps - start)
            rows = np.asarray(rows_of(start, length))
            if padded:
                real, rows = rows >= 0, np.maximum(rows, 0)
            gathered = tuple(read(rows) for read in readers)
            if check_finite:
                _refuse_non_finite(gathered, f"rows of steps {start}..{start + length - 1}")
            yield ((real,) + gathered if padded else gathered), length, padded
    finally:
        for read in readers:
            read.close()


def stream_blocks(batches, block, steps, check_finite, check_short=None):
    """``(stacked batches, count, padded)`` for each ``block`` batches of an
    iterable (at most ``steps`` in all when given). Every batch must have the
    first batch's shapes and dtypes, or be shorter (fewer rows, as a data
    loader's last batch with ``drop_last=False``): a block holding a short
    batch is ``padded``, its batches filled up to the first's rows with
    copies of their first row, and the mask of real slots stacked first.
    ``check_short()`` runs before the first padded block.

    Each batch is copied into its block as it is taken (see :func:`_take`),
    before the next one is asked for.
    """
    first, taken = None, 0
    iterator = iter(batches)
    while steps is None or taken < steps:
        want = block if steps is None else min(block, steps - taken)
        slots, odd, count, first = _take(iterator, want, first, taken)
        if not count:
            return
        if odd:
            group = [odd[i] if i in odd else tuple(slot[i] for slot in slots)
                     for i in range(count)]
            stacked, padded = _padded(group, first, taken)
        else:
            stacked, padded = tuple(slot[:count] for slot in slots), False
        if padded and check_short is not None:
            check_short()
            check_short = None
        if check_finite:
            _refuse_non_finite(stacked[padded:], f"batches {taken}..{taken + count - 1}")
        taken += count
        yield stacked, count, padded
        if count < want:
            return


def _take(iterator, want, first, taken):
    """Up to ``want`` batches of ``iterator``, each copied as it is taken:
    a loader may reuse its buffers for the next batch (correct in a for
    loop, which reads a batch before asking for the next), so a batch held
    by reference may change under us.

    A batch with the first batch's shapes and dtypes is copied into its
    slot of the block (one copy, the one stacking makes anyway); any other
    batch (a short one, or a wrong one) is copied whole into ``odd``, by its
    place in the group, for :func:`_padded` to fill or refuse.

    Returns ``(slots, odd, count, first)``: the block's arrays (``want``
    rows each, ``count`` of them taken), ``odd`` and the stream's first
    batch (shapes and dtypes only are read from it).
    """
    slots, odd, count = None, {}, 0
    for batch in itertools.islice(iterator, want):
        number = taken + count
        if type(batch) is not tuple:
            batch = _as_tuple(batch, number)
        if slots is None:  # the group's first batch: the block's arrays
            first = first or tuple(as_host_array(a, f"batch {number}[{j}]")
                                   for j, a in enumerate(batch))
            slots = tuple(aligned_empty((want,) + a.shape, a.dtype) for a in first)
            expected = [(a.shape, a.dtype) for a in first]
        fits = len(batch) == len(slots)
        if fits:
            for j, (slot, a, (shape, dtype)) in enumerate(zip(slots, batch, expected)):
                if type(a) is not np.ndarray:
                    a = as_host_array(a, f"batch {number}[{j}]")
                if a.shape != shape or a.dtype != dtype:
                    fits = False
                    break
                slot[count] = a
        if not fits:
            odd[count] = tuple(np.array(as_host_array(a, f"batch {number}[{j}]"))
                               for j, a in enumerate(batch))
        if number == 0:
            first = tuple(slot[0] for slot in slots)  # the copy: the loader may reuse batch 0
        count += 1
    return slots, odd, count, first


def _as_tuple(batch, number):
    """A batch as a tuple: a list as one, an array as the tuple of it."""
    if isinstance(batch, list):
        return tuple(batch)
    if hasattr(batch, "shape") and hasattr(batch, "dtype"):
        return (batch,)
    if isinstance(batch, tuple):
        return batch
    raise TypeError(f"batch {number} of the stream is a {type(batch).__name__}; a stream "
                    "yields tuples of arrays, e.g. (x, y), or single arrays.")


def _shapes(batch, skip=0):
    """``dtype[shape]`` of each array of ``batch`` (without its first ``skip`` axes)."""
    return [f"{a.dtype}{list(a.shape[skip:])}" if hasattr(a, "dtype") and hasattr(a, "shape")
            else type(a).__name__ for a in batch]


def _padded(group, first, taken):
    """A group holding a short batch: the mask of real rows, then the batches
    filled up to the first batch's rows; or the error naming the first batch
    that is neither the first's shapes nor shorter."""
    rows = first[0].shape[0] if first and first[0].ndim else 0
    for i, batch in enumerate(group):
        fits = _shapes(batch, 1) == _shapes(first, 1) and all(a.ndim for a in batch)
        lengths = {a.shape[0] for a in batch} if fits else set()
        if lengths == {0}:
            raise _no_rows(taken + i, batch)
        if len(lengths) != 1 or not 0 < lengths.pop() <= rows:
            raise ValueError(
                f"batch {taken + i} of the stream has {_shapes(batch)}, the first had "
                f"{_shapes(first)}; every batch must have the first batch's shapes and "
                "dtypes, or be shorter (fewer rows, at least one): data cannot be stacked.")
    real = np.stack([np.arange(rows) < batch[0].shape[0] for batch in group])
    filled = [tuple(_fill(a, rows) for a in batch) for batch in group]
    return (real,) + tuple(np.stack(arrays) for arrays in zip(*filled)), True


def _no_rows(number, batch):
    return ValueError(f"batch {number} of the stream has no rows ({_shapes(batch)}): a step "
                      "needs at least one row. Drop empty batches from the stream, e.g. "
                      "(b for b in batches if len(b[0])).")


def _fill(a, rows):
    """``a`` with copies of its first row appended up to ``rows`` rows (real
    values: the mask leaves them out, and no NaN can leak from them)."""
    if a.shape[0] == rows:
        return a
    return np.concatenate([a, np.broadcast_to(a[:1], (rows - a.shape[0],) + a.shape[1:])])


ALIGNMENT = 64
"""Bytes: JAX on CPU takes a NumPy array this aligned as it is, without a copy
(``bench/investigations/host_data.py`` times blocks of batches read this way)."""


def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` starting at a multiple of ``ALIGNMENT`` bytes."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def first_batch(batches, saved=None):
    """The first batch of a stream (as host arrays) and the stream with it put back.

    An empty stream is refused, unless a checkpoint's fingerprint ``saved``
    describes its batches (a resumed run whose stream is used up): then
    zeros of those shapes stand in for the first batch."""
    iterator = iter(batches)
    try:
        batch = next(iterator)
    except StopIteration:
        described = (saved or {}).get("source", {}).get("stream", {}).get("batch")
        if not described:
            raise ValueError("data is a stream that yielded no batches.") from None
        return tuple(np.zeros(json.loads(text[text.index("["):]), text[:text.index("[")])
                     for text in described), iter(())
    parts = batch if isinstance(batch, (tuple, list)) else (batch,)
    nested = [type(a).__name__ for a in parts if isinstance(a, (tuple, list, dict))]
    if isinstance(batch, dict) or nested:
        raise TypeError(
            "data: a stream's batches must be tuples of arrays (or one array); its first "
            f"batch holds a {type(batch).__name__ if isinstance(batch, dict) else nested[0]}. "
            "Yield (x, y) from the stream, or pass the pytree as in-memory data, where "
            "fit takes any pytree of arrays.")
    parts = tuple(as_host_array(a, f"batch 0[{i}]")
                  for i, a in enumerate(_as_tuple(batch, 0)))
    if any(a.ndim and a.shape[0] == 0 for a in parts):
        raise _no_rows(0, parts)
    return parts, itertools.chain([parts], iterator)  # batch 0 as host arrays: read once


def as_host_array(a, name):
    """``a`` as a host NumPy array: a CPU torch tensor as the NumPy view of its
    memory (torch is never imported here), a JAX array copied to the host."""
    if type(a).__module__.startswith("torch"):
        if a.device.type != "cpu":
            raise TypeError(f"{name} is a torch tensor on {a.device}; fit reads torch "
                            "tensors on the CPU only: pass tensor.cpu(), or a JAX array.")
        try:
            return a.detach().numpy()
        except TypeError as error:  # a dtype NumPy lacks, e.g. torch.bfloat16
            raise TypeError(f"{name} is a torch tensor of dtype {a.dtype}, which NumPy "
                            f"cannot hold ({error}); convert it, e.g. tensor.float().") from None
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name} must be an array; got {type(a).__name__}.")
    return np.asarray(a)


def _refuse_non_finite(arrays, where):
    for i, a in enumerate(arrays):
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise ValueError(f"data[{i}] holds NaN or inf in the {where}; clean or drop "
                             "those rows (or pass run=fsgd.Run(check_finite=False) to skip "
                             "this check).")
