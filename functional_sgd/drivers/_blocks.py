"""Data read on the host a block of steps at a time: streams and arrays too
large to copy whole (a ``np.memmap``).

The loop runs one compiled call per block of steps, on that block's batches
stacked ahead (``(steps, batch_size, ...)``, step ``t`` reading row ``t``).
While a block trains, the next one is read and copied: JAX returns from a
compiled call before the device is done, so reading the next block on the
host overlaps with the training of this one, without threads; the host waits
for a block's results only after the next block is ready.
"""

import dataclasses

import jax
import numpy as np

from .._types import fit_result
from ._chunks import eval_count, join


class Stream:
    """An iterable of batches as ``fit``'s data (see :func:`stream`)."""

    def __init__(self, batches, block):
        self.batches = batches
        self.block = block

    def __repr__(self):
        return f"stream({type(self.batches).__name__}, block={self.block})"


def stream(batches, *, block=256):
    """Trains on any iterable of batches: ``fit(loss, params, stream(loader), lr=...)``.

    Each batch is a tuple of arrays sharing their leading axis (NumPy, JAX or
    CPU torch tensors: a torch ``DataLoader``, a generator, a grain loader),
    or one array. ``fit`` stacks ``block`` batches on the host, trains them
    in one compiled call, and reads the next block while that call runs.
    ``steps=None`` trains until the iterable ends. Every batch must have the
    first batch's shapes.

    A stream is read once, from where it stands: to resume a checkpointed or
    chunked run, pass an iterator already positioned at the step to resume
    from (``start_step``).

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
    if not hasattr(batches, "__iter__"):
        raise TypeError(f"stream needs an iterable of batches; got {type(batches).__name__}.")
    return Stream(batches, block)


def run_in_blocks(run, spec, carry, inputs, blocks, *, steps=None, on_chunk=None):
    """Runs ``spec`` (whose batches are stacked) on each ``(data, steps)`` of
    ``blocks`` in turn; returns ``(Carry, Record)`` of the whole run.

    ``steps`` is the run's length when known (losses of steps a stop rule
    skipped are NaN); ``None`` for as many as the blocks hold.
    """
    records, done = [], 0
    blocks = iter(blocks)
    ahead = next(blocks, None)
    while ahead is not None:
        data, length = ahead
        data = jax.device_put(data)
        piece = spec.part(done, length) if steps is not None \
            else dataclasses.replace(spec, steps=length)
        carry, record = run(piece, carry, inputs._replace(data=data))
        ahead = next(blocks, None)  # read while the block trains
        records.append(record)
        done += int(record.steps_run)
        asked_to_stop = on_chunk is not None and on_chunk(fit_result(carry, record)) is True
        if asked_to_stop or bool(carry.stop.stopped):
            break
    if not records:
        raise ValueError("data yielded no batches: the stream was empty.")
    return carry, join(records, done if steps is None else steps, spec.record_params,
                       carry.params, 0 if steps is None else eval_count(spec))


def gathered_blocks(data, rows_of, steps, block, check_finite):
    """``(data block, steps)`` for each block of ``steps``: the rows ``rows_of(start,
    length)`` names, read from ``data`` on the host (a memmap reads only those).

    The finite check reads each block once, as it is gathered.
    """
    for start in range(0, steps, block):
        length = min(block, steps - start)
        rows = np.asarray(rows_of(start, length))
        gathered = tuple(np.asarray(a[rows]) for a in data)
        if check_finite:
            _refuse_non_finite(gathered, f"rows of steps {start}..{start + length - 1}")
        yield gathered, length


def stream_blocks(batches, block, steps, check_finite):
    """``(stacked batches, count)`` for each ``block`` batches of an iterable
    (at most ``steps`` in all when given). Every batch must have the first
    batch's shapes and dtypes; NumPy batches pass as they are, and the check
    is the stack itself (shapes) and its dtype, so a batch costs little more
    than its copy into the block."""
    first, taken = None, 0
    iterator = iter(batches)
    while steps is None or taken < steps:
        want = block if steps is None else min(block, steps - taken)
        group = []
        for batch in iterator:
            if type(batch) is not tuple:
                batch = tuple(batch) if isinstance(batch, list) else (batch,)
            if not all(type(a) is np.ndarray for a in batch):
                batch = tuple(as_host_array(a, f"batch {taken + len(group)}[{i}]")
                              for i, a in enumerate(batch))
            group.append(batch)
            if len(group) == want:
                break
        if not group:
            return
        first = first or group[0]
        stacked = _stack(group, first, taken)
        if check_finite:
            _refuse_non_finite(stacked, f"batches {taken}..{taken + len(group) - 1}")
        taken += len(group)
        yield stacked, len(group)
        if len(group) < want:
            return


def _stack(group, first, taken):
    """The batches of ``group`` stacked, or a clear error naming the first one
    whose shapes or dtypes differ from the stream's first batch."""
    try:
        stacked = tuple(np.stack(arrays) for arrays in zip(*group, strict=True))
        if all(s.dtype == a.dtype for s, a in zip(stacked, first)) and len(stacked) == len(first):
            return stacked
    except ValueError:
        pass
    described = lambda batch: [f"{a.dtype}{list(a.shape)}" for a in batch]
    for i, batch in enumerate(group):
        if described(batch) != described(first):
            raise ValueError(
                f"batch {taken + i} of the stream has {described(batch)}, the first had "
                f"{described(first)}; every batch must have the first batch's shapes and "
                "dtypes (drop a short last batch, e.g. DataLoader(drop_last=True)).")
    raise ValueError(f"the stream's batches {taken}..{taken + len(group) - 1} cannot be stacked.")


def first_batch(batches):
    """The first batch of a stream (as host arrays) and the stream with it put back."""
    iterator = iter(batches)
    try:
        batch = next(iterator)
    except StopIteration:
        raise ValueError("data is a stream that yielded no batches.") from None
    parts = tuple(as_host_array(a, f"batch 0[{i}]") for i, a in enumerate(
        batch if isinstance(batch, (tuple, list)) else (batch,)))
    batch = parts  # as host arrays, so the stream's batches are read once

    def again():
        yield batch
        yield from iterator

    return parts, again()


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
                             "those rows (or pass check_finite=False to skip this check).")
