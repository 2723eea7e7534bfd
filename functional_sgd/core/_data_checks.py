"""Checks of the data a run reads: the training arrays, the held-out
arrays and an explicit schedule of rows, done in plain Python while values
are concrete.

Values are checked where they are cheapest to read: arrays NumPy reads in
place on the host, others in one compiled call on their device. What a
check learned about a JAX array that XLA owns (it never changes) is
remembered for the array's life, by the memory of calls that checks it
(:class:`Facts`).
"""

import contextlib
import contextvars
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from ..drivers import as_host_array
from ._arguments import is_concrete, is_inexact_dtype
from ._warn import caller_stacklevel


def holds_host_arrays(tree):
    """Whether ``tree`` holds a NumPy array: JAX's CPU client reads an aligned
    one in place, so the compiled call, which returns before it has run,
    would see what the caller writes into it after ``fit`` returned."""
    return any(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(tree))


def read_on_host(data, batch_size, indices):
    """Whether rows are read on the host a block at a time: a ``np.memmap``
    among the data, with batches that each read only some rows."""
    return ((batch_size is not None or indices is not None)
            and isinstance(data, (tuple, list)) and any(isinstance(a, np.memmap) for a in data))


def flatten_data(data):
    """``(leaves, structure, names)``: ``data`` as a flat tuple of arrays.

    A tuple (or list) of arrays is that tuple, ``structure`` ``None``: its
    arrays are the loss's arguments. Any other pytree of arrays (a dict, a
    tuple holding tuples or dicts) is flattened, and ``structure`` is the
    treedef of the loss's data arguments: the elements of a tuple, or the
    pytree itself as one argument. ``names`` names each leaf for messages
    (``data['x']``), or is ``None`` for ``data[i]``.
    """
    if isinstance(data, (tuple, list)) and not any(
            isinstance(a, (tuple, list, dict)) for a in data):
        return data, None, None
    if data is None or jax.tree_util.treedef_is_leaf(jax.tree.structure(data)):
        return data, None, None  # one array: check_data asks for (x,)
    arguments = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    leaves, structure = jax.tree_util.tree_flatten_with_path(arguments)
    names = tuple("data" + jax.tree_util.keystr(path if isinstance(data, (tuple, list))
                                               else path[1:]) for path, _ in leaves)
    return tuple(a for _, a in leaves), structure, names


def check_data(data, check_finite, names=None):
    """Returns data as a tuple of arrays and its number of rows (None if empty).

    ``names`` names the arrays in messages (``data[i]`` when ``None``).
    """
    if not isinstance(data, (tuple, list)):
        raise TypeError(
            "data must be a tuple of arrays sharing their leading axis, e.g. (x, y), or () "
            f"for a data-free objective; got {type(data).__name__}. Wrap a single array "
            "as (x,).")
    name = (lambda i: f"data[{i}]") if names is None else names.__getitem__
    if not all(isinstance(a, (np.ndarray, jax.Array)) for a in data):  # the usual arrays
        data = tuple(_from_torch(a, name(i)) for i, a in enumerate(data))
    data = tuple(data)
    for i, a in enumerate(data):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name(i)} must be an array; got {type(a).__name__}.")
        if len(a.shape) == 0:
            raise ValueError(f"{name(i)} must have a leading axis of rows; got a scalar.")
    if not data:
        return data, None
    rows = [a.shape[0] for a in data]
    if len(set(rows)) > 1:
        shapes = ", ".join(f"{name(i)}.shape={tuple(a.shape)}" for i, a in enumerate(data))
        raise ValueError(
            f"data arrays must share their leading axis (the rows); got {shapes}.")
    if rows[0] == 0:
        raise ValueError("data has no rows (leading axis of length 0).")
    warn_if_narrowed(data, "data")
    if check_finite:
        for i in _non_finite(data):
            raise ValueError(
                f"{name(i)} contains NaN or inf values; clean or drop those rows "
                "(or pass run=fsgd.Run(check_finite=False) to skip this check).")
    return data, rows[0]


def _from_torch(a, name):
    """A CPU torch tensor as the NumPy view of its memory; anything else as it is."""
    return as_host_array(a, name) if type(a).__module__.startswith("torch") else a


def warn_if_narrowed(tree, name):
    """Warns when 64-bit NumPy input will run in 32 bits (x64 off), as JAX
    narrows it without a word (once per calling line: ``_warn``)."""
    if jax.config.jax_enable_x64:
        return
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, (np.ndarray, np.generic)) and leaf.dtype in _WIDE:
            warnings.warn(
                f"{name} holds {leaf.dtype} values but jax_enable_x64 is off, so fit "
                f"computes in {_WIDE[leaf.dtype]} (as every JAX function does). To "
                "train in 64 bits, run under `with jax.enable_x64(True):` or set "
                "jax.config.update('jax_enable_x64', True) at start-up. (Said once per "
                "calling line.)",
                UserWarning, stacklevel=caller_stacklevel())
            return


_WIDE = {np.dtype(np.float64): "float32", np.dtype(np.complex128): "complex64"}


def check_eval_data(eval_data, check_finite, groups=None):
    """``eval_data`` as a tuple of arrays sharing their leading axis (each
    group of ``groups`` leaves its own: named held-out sets; CPU torch
    tensors as NumPy views of their memory, as ``data`` takes them)."""
    if not isinstance(eval_data, (tuple, list)):
        raise TypeError("Evaluation(data=) must be a tuple of arrays, unpacked into evaluate's "
                        f"arguments, e.g. (valid_x, valid_y); got {type(eval_data).__name__}. "
                        "Wrap a single array as (x,).")
    eval_data = tuple(_from_torch(a, f"Evaluation(data=)[{i}]")
                      for i, a in enumerate(eval_data))
    for i, a in enumerate(eval_data):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"Evaluation(data=)[{i}] must be an array; got {type(a).__name__}.")
    first = 0
    for count in groups or (len(eval_data),):  # each named set has rows of its own
        group = eval_data[first:first + count]
        first += count
        rows = {tuple(a.shape[:1]) for a in group}
        if len(rows) > 1 or any(len(a.shape) == 0 for a in group):
            break
    else:
        rows = ()
    if len(rows) > 1 or any(len(a.shape) == 0 for a in eval_data):
        shapes = ", ".join(f"data[{i}].shape={tuple(a.shape)}"
                           for i, a in enumerate(eval_data))
        raise ValueError(f"Evaluation(data=) arrays must share their leading axis (the rows); "
                         f"got {shapes}.")
    if eval_data and eval_data[0].shape[0] == 0:
        raise ValueError(f"Evaluation(data=) has no rows (leading axis of length 0): data[0] has "
                         f"shape {tuple(eval_data[0].shape)}, and evaluating on nothing gives "
                         "NaN. Pass held-out rows, or drop the Evaluation.")
    if check_finite:
        for i in _non_finite(eval_data):
            raise ValueError(f"Evaluation(data=)[{i}] contains NaN or inf values; clean or drop "
                             "those rows (or pass run=fsgd.Run(check_finite=False) to skip "
                             "this check).")
    return eval_data


_HOST_CHECK_BYTES = 1 << 16
"""JAX arrays on an accelerator up to this size are copied to the host and
checked there: the copy costs less than dispatching a compiled check."""


def _host_view(a):
    """``a`` as a NumPy array when that needs no copy (NumPy arrays, and JAX
    arrays on one CPU device, which NumPy reads in place), else ``None``."""
    if isinstance(a, np.ndarray):
        return a
    devices = a.devices()
    if len(devices) == 1 and next(iter(devices)).platform == "cpu":
        return np.asarray(a)
    return None


def _finite_on_host(a):
    """Whether ``a`` holds no NaN or inf. Its min and max propagate NaN and
    show an inf, and NumPy vectorises them: on CPU several times faster
    than XLA:CPU's reduction of the same array."""
    if a.size <= 4096 or np.issubdtype(a.dtype, np.complexfloating):  # small: one pass
        return bool(np.isfinite(a).all())
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def _non_finite(data):
    """Positions of the concrete float arrays in ``data`` holding NaN or inf.

    Arrays NumPy can read in place (host and CPU arrays) and small arrays are
    checked on the host; larger arrays on an accelerator all together in one
    compiled call on their device, so a warm ``fit`` pays at most one
    dispatch and one host sync for this check.
    """
    bad, on_device, checked = [], [], []
    facts = _FACTS.get()
    for i, a in enumerate(data):
        if not (is_concrete(a) and is_inexact_dtype(a.dtype)) \
                or (facts is not None and facts.recall(a, "finite")):
            continue
        checked.append((i, a))
        view = _host_view(a)
        if view is None and a.size * a.dtype.itemsize <= _HOST_CHECK_BYTES:
            view = np.asarray(a)
        if view is None:
            on_device.append((i, a))
        elif not _finite_on_host(view):
            bad.append(i)
    if on_device:
        with jax.ensure_compile_time_eval():  # concrete data closed over by a jit trace
            finite = np.asarray(_jit_all_finite(tuple(a for _, a in on_device)))
        bad += [i for (i, _), ok in zip(on_device, finite) if not ok]
    for i, a in checked:
        if i not in bad and facts is not None:
            facts.remember(a, "finite", True)
    return sorted(bad)


class Facts:
    """What checks learned about JAX arrays: ``(id, fact) -> (weakref, value)``.

    A JAX array that XLA owns never changes its values, so a check holds for
    the array object's life; NumPy arrays can be written to, and so can JAX
    arrays that may be views of host memory (:func:`may_share_host_memory`):
    both are checked on every call. An entry leaves with its array. A memory
    of calls (``_warm.Memory``: ``fit``'s, a ``Trainer``'s) holds one, and
    the checks of the calls it runs use it (:func:`remembering`).
    """

    def __init__(self):
        self._seen = {}

    def recall(self, a, fact):
        """The value remembered for ``a``, or ``None``."""
        entry = self._seen.get((id(a), fact))
        return entry[1] if entry is not None and entry[0]() is a else None

    def remember(self, a, fact, value):
        if not isinstance(a, jax.Array) or not is_concrete(a) or may_share_host_memory(a):
            return
        key, seen = (id(a), fact), self._seen
        seen[key] = (weakref.ref(a, lambda _: seen.pop(key, None)), value)


_FACTS: contextvars.ContextVar[Facts | None] = contextvars.ContextVar("facts", default=None)
"""The :class:`Facts` of the call being checked; ``None`` (nothing
remembered) outside :func:`remembering`."""


@contextlib.contextmanager
def remembering(facts):
    """Checks made inside look up, and keep, what they learn in ``facts``."""
    token = _FACTS.set(facts)
    try:
        yield
    finally:
        _FACTS.reset(token)


def _on_cpu(a):
    """Whether JAX array ``a`` sits on one CPU device (one that NumPy reads in place)."""
    try:
        return a.device.platform == "cpu"
    except (AttributeError, ValueError):  # on several devices: none is read in place
        return False


def may_share_host_memory(a):
    """Whether the values of JAX array ``a`` may change under it: on a CPU
    device it can be a view of another library's memory that its owner
    writes to (``jax.device_put`` of an aligned NumPy array, DLPack), and
    nothing tells such a view from an array XLA owns."""
    return any(device.platform == "cpu" for device in a.devices())


def values_still_pass(data, indices, eval_data, *, check_finite, drop_last, padded, facts):
    """Whether a warm call's arrays (``_warm``) still pass the checks of their
    values: the finiteness of ``data`` and ``eval_data`` and the range of
    ``indices``, read again for arrays that may share host memory (others
    are looked up in ``facts``). ``padded``: whether the remembered run's
    schedule held padding; a schedule that now does, or does not, is not
    the same run."""
    if check_finite:
        for a in (*data, *eval_data):  # JAX arrays elsewhere never change: passed before
            if is_inexact_dtype(a.dtype) and (isinstance(a, np.ndarray) or _on_cpu(a)) \
                    and not _finite_on_host(np.asarray(a)):  # NumPy reads a CPU array in place
                return False
    if indices is None:
        return True
    try:
        return check_indices(indices, data[0].shape[0], drop_last, facts=facts) == padded
    except ValueError:
        return False


@jax.jit
def _jit_all_finite(arrays):
    return jnp.stack([jnp.isfinite(a).all() for a in arrays])


def check_indices(indices, n, drop_last=True, *, facts=None):
    """Checks an explicit schedule; returns whether it holds ``-1`` padding.

    Rows lie in ``[0, n)``; with ``drop_last=False`` a slot may also hold
    ``-1`` (padding: that step is the mean over its real rows), anywhere in
    its step's row, as long as every step keeps one real row. Traced
    indices cannot be looked at: with ``drop_last=False`` they are taken as
    padded. ``facts``: where a range learned is kept (by default those of
    the call being checked, :func:`remembering`).
    """
    if n is None:
        raise ValueError("rows=fsgd.Schedule(indices) needs data to index: data is ().")
    if not hasattr(indices, "shape") or not hasattr(indices, "dtype"):
        raise TypeError(f"Schedule's indices must be an integer array; got "
                        f"{type(indices).__name__}.")
    if len(indices.shape) != 2:
        raise ValueError(
            "Schedule's indices must have shape (steps, batch_size); got shape "
            f"{tuple(indices.shape)}.")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"Schedule's indices must be an integer array; got dtype {indices.dtype}.")
    if indices.shape[0] == 0 or indices.shape[1] == 0:
        raise ValueError(f"Schedule's indices must not be empty; got shape "
                         f"{tuple(indices.shape)}.")
    if not is_concrete(indices):
        return not drop_last
    facts = _FACTS.get() if facts is None else facts
    low_high = None if facts is None else facts.recall(indices, "range")
    if low_high is None:
        view = _host_view(indices)
        if view is not None:
            low_high = int(view.min()), int(view.max())
        else:
            with jax.ensure_compile_time_eval():  # as in _non_finite
                low_high = tuple(map(int, _jit_min_max(indices)))
        if facts is not None:
            facts.remember(indices, "range", low_high)
    low, high = low_high
    lowest = -1 if not drop_last else 0
    if low < lowest or high >= n:
        allowed = f"[0, {n})" + (" or -1 (padding)" if not drop_last else "")
        hint = (" A -1 marks padding only with fsgd.Schedule(indices, padded=True)."
                if low == -1 and drop_last else "")
        raise ValueError(
            f"Schedule's indices must lie in {allowed} (data has n={n} rows); got values from "
            f"{int(low)} to {int(high)}.{hint}")
    if low >= 0:
        return False
    empty = np.flatnonzero(np.asarray(indices).max(axis=1) < 0)
    if empty.size:
        raise ValueError(f"Schedule's indices has steps of padding only (-1 in every slot), "
                         f"the first at step {int(empty[0])}; every step needs at least one "
                         "real row.")
    return True


@jax.jit
def _jit_min_max(a):
    return a.min(), a.max()
