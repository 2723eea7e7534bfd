"""Which rows each step sees, taken from an order that already exists.

:func:`schedule_from` turns a torch ``DataLoader``, ``Sampler`` or
``BatchSampler``, or lists of row indices, into the ``(steps, batch_size)``
schedule that ``fit(rows=fsgd.Schedule(...))`` replays; :func:`from_batches` trains on
arrays already cut into batches, ``(steps, batch, ...)``.

torch is never imported here: an object can only be torch's when the
caller has imported torch already (``sys.modules``).
"""

import contextlib
import numbers
import random
import sys
from collections.abc import Iterable
from typing import Any, Callable

import jax
import numpy as np

from . import _arguments


def schedule_from(order: Iterable | Callable[[], Iterable], *, epochs: int = 1) -> np.ndarray:
    """The schedule of rows an existing loader (or list) would give, for ``fsgd.Schedule``.

    Step ``t`` of the schedule is the ``t``-th batch ``order`` yields, epoch
    after epoch; a short batch (``drop_last=False``) is padded with ``-1``.
    A torch ``DataLoader`` is replayed exactly as iterating it would go now,
    a shuffling one included (its order drawn from its ``generator``, or
    torch's global one, as the loader draws it): the random generators it
    reads (torch's, Python's ``random`` and NumPy's global state) are put
    back as they were, so the loader then yields this very order.

    Args:
      order: a torch ``DataLoader`` over a map-style dataset, a
        ``BatchSampler`` or any iterable of batches of row indices (lists
        after ``random.shuffle``, say), or a ``Sampler`` (any iterable) of
        single indices, each one step of one row. A new ``iter(order)``
        starts each epoch. Or a function of no arguments that returns one
        epoch's batches (a generator function that shuffles as it starts,
        as hand-written loops do): it is called once an epoch.
      epochs: how many times to go through ``order``.

    Returns:
      An int32 NumPy array ``(steps, batch_size)``, ``batch_size`` the
      longest batch. With ``-1`` padding in it, pass it as
      ``rows=fsgd.Schedule(indices, padded=True)`` (each short step is then the mean over its real rows).

    >>> import functional_sgd as fsgd
    >>> fsgd.schedule_from([[3, 0, 4], [1, 2]], epochs=2)
    array([[ 3,  0,  4],
           [ 1,  2, -1],
           [ 3,  0,  4],
           [ 1,  2, -1]], dtype=int32)
    """
    epochs = _arguments.check_int(epochs, "epochs", minimum=1)
    torch = sys.modules.get("torch")
    if not isinstance(order, Iterable) and not callable(order):
        raise TypeError("order must be a torch DataLoader, Sampler or BatchSampler, an "
                        "iterable of batches of row indices or a function that returns "
                        f"one epoch's batches; got {type(order).__name__}.")
    batches: list[list[int]] = []
    with _random_state_kept(torch, order):
        for epoch in range(epochs):
            seen = len(batches)
            batches.extend(_one_epoch(order, torch, epoch))
            if len(batches) == seen:
                raise ValueError(
                    f"order gave no batches in epoch {epoch + 1}" + (
                        ": it is an iterator, used up after one pass; pass a list, a "
                        "sampler or a function that returns each epoch's batches." if epoch
                        else "."))
    return _padded(batches)


def _one_epoch(order, torch, epoch):
    """The batches of one pass over ``order``, as lists of Python ints."""
    if torch is not None and isinstance(order, torch.utils.data.DataLoader):
        order = _index_sampler(order, torch, epoch)
    elif not isinstance(order, Iterable):  # a function that returns one epoch's batches
        order = order()
        if not isinstance(order, Iterable):
            raise TypeError("order() must return an iterable of batches of row indices; "
                            f"it returned {type(order).__name__}.")
    for step, batch in enumerate(order):
        yield _rows(batch, step)


def _index_sampler(loader, torch, epoch):
    """What a ``DataLoader`` reads its indices from, after the random draw
    its iterator makes before them (its workers' base seed, once an epoch;
    once in all with persistent workers)."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        raise ValueError("order is a DataLoader over an IterableDataset, which decides its "
                         "own order: there are no indices to replay; train on it with "
                         "fsgd.stream(loader) instead.")
    if loader.num_workers > 0 and getattr(loader, "in_order", True) is False:
        raise ValueError("order is a DataLoader with in_order=False: its workers may "
                         "return batches out of the sampler's order; pass in_order=True.")
    persistent = loader.persistent_workers and loader.num_workers > 0
    if not persistent or (epoch == 0 and getattr(loader, "_iterator", None) is None):
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return loader.batch_sampler if loader.batch_sampler is not None else loader.sampler


def _rows(batch, step):
    """One batch (an int, or a sequence, array or tensor of ints) as a list of ints."""
    if isinstance(batch, numbers.Integral) and not isinstance(batch, bool):
        rows = [int(batch)]
    else:
        try:
            array = np.asarray(batch)
        except Exception as error:
            raise TypeError(f"order's step {step} is not a batch of row indices: "
                            f"{batch!r} ({error}).") from None
        if array.size == 0:
            raise ValueError(f"order's step {step} is empty; every batch needs a row.")
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"order must give integer row indices; its step {step} is "
                            f"{batch!r} (dtype {array.dtype}).")
        rows = array.reshape(-1).tolist()
    low = min(rows)
    if low < 0:
        raise ValueError(f"order's step {step} holds the row {low}; rows are indices >= 0 "
                         "(-1 padding is added here, for short batches).")
    return rows


def _padded(batches):
    if not batches:
        raise ValueError("order has no batches.")
    width = max(map(len, batches))
    highest = max(max(b) for b in batches)
    dtype = np.int32 if highest <= _arguments.MAX_STEP else np.int64
    schedule = np.full((len(batches), width), -1, dtype)
    for step, rows in enumerate(batches):
        schedule[step, :len(rows)] = rows
    return schedule


@contextlib.contextmanager
def _random_state_kept(torch, order):
    """Puts back the random states a sampler may draw from (torch's default
    generator and those ``order`` holds, Python's ``random``, NumPy's legacy
    global state) when the block ends."""
    python, legacy = random.getstate(), np.random.get_state()
    generators = [] if torch is None else _torch_generators(torch, order)
    states = [g.get_state() for g in generators]
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(legacy)
        for generator, state in zip(generators, states):
            generator.set_state(state)


def _torch_generators(torch, order):
    """torch's default CPU generator and the ``torch.Generator`` objects that
    ``order`` holds (a loader's, its samplers'), a few attributes deep."""
    found = [torch.default_generator]

    def look(value, depth):
        if isinstance(value, torch.Generator):
            if all(value is not g for g in found):
                found.append(value)
        elif depth < 4 and isinstance(value, (torch.utils.data.Sampler,
                                              torch.utils.data.DataLoader)):
            for attribute in vars(value).values():
                look(attribute, depth + 1)

    look(order, 0)
    return found


def from_batches(data: Any, *, epochs: int = 1) -> tuple[Any, np.ndarray]:
    """Arrays already cut into batches, ``(steps, batch, ...)``, as ``fit``'s
    ``(data, indices)``: each leaf seen as ``(steps * batch, ...)`` (a view
    where the array allows one) and the schedule that steps through the
    batches in order.

    Args:
      data: a tuple of arrays (NumPy, JAX, torch CPU tensors) or any pytree
        of them, each of shape ``(steps, batch, ...)``, all with the same
        ``steps`` and ``batch``.
      epochs: how many times to go through the batches.

    Returns:
      ``(data, indices)``: ``data`` in the structure given, each leaf
      ``(steps * batch, ...)``; ``indices`` int32 ``(epochs * steps, batch)``,
      step ``t`` the rows of batch ``t % steps``.

    >>> import jax.numpy as jnp
    >>> import functional_sgd as fsgd
    >>> xb, yb = jnp.ones((4, 8, 2)), jnp.ones((4, 8))  # 4 batches of 8 rows
    >>> data, indices = fsgd.from_batches((xb, yb))
    >>> result = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), data, lr=0.1,
    ...                   rows=fsgd.Schedule(indices))
    >>> data[0].shape, indices.shape, result.losses.shape
    ((32, 2), (4, 8), (4,))
    """
    epochs = _arguments.check_int(epochs, "epochs", minimum=1)
    with_paths, structure = jax.tree_util.tree_flatten_with_path(data)
    if not with_paths:
        raise ValueError("data holds no arrays; pass a tuple of arrays of shape "
                         "(steps, batch, ...).")
    first: tuple[int, ...] | None = None
    for path, leaf in with_paths:
        name = "data" + jax.tree_util.keystr(path)
        shape = tuple(getattr(leaf, "shape", ()))
        if len(shape) < 2:
            raise ValueError(f"{name} has shape {shape}; pre-batched arrays have shape "
                             "(steps, batch, ...).")
        if first is None:
            first = shape[:2]
        elif shape[:2] != first:
            raise ValueError(f"{name} has shape {shape}, but the first array's batches are "
                             f"{first}: every array must be ({first[0]}, {first[1]}, ...).")
    assert first is not None  # with_paths is not empty
    steps, batch = first
    flat = [leaf.reshape((steps * batch,) + tuple(leaf.shape[2:])) for _, leaf in with_paths]
    indices = np.arange(steps * batch, dtype=np.int32).reshape(steps, batch)
    return jax.tree.unflatten(structure, flat), np.tile(indices, (epochs, 1))
