"""Input validation, done in plain Python while values are concrete.

Every check names the argument, the value it got and what was expected.
Values that are tracers (``fit`` called under ``jax.jit`` or ``jax.vmap``)
cannot be inspected; their checks are skipped so that tracing still works.
"""

import functools
from typing import Any
import math
import numbers
import os
import sys
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from ..drivers import as_host_array
from ._flax_nnx import refuse_outside_variables


def is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


MAX_STEP = 2**31 - 1
"""Steps are counted in int32 on the device (as JAX counts by default)."""


def check_int(value, name, *, minimum, maximum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}.")
    return int(value)


def check_key(key, name):
    """Accepts new-style typed keys and legacy ``uint32[2]`` keys."""
    if key is None:
        raise TypeError(f"{name} is required: pass a jax.random key, e.g. jax.random.key(0).")
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(
            f"{name} must be a jax.random key, e.g. jax.random.key(0); got {key!r} "
            f"of type {type(key).__name__}.")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single key (shape ()); got shape {key.shape}.")
    elif not (key.dtype == jnp.uint32 and key.shape == (2,)):
        raise TypeError(
            f"{name} must be a jax.random key, e.g. jax.random.key(0); got an array "
            f"of dtype {key.dtype} and shape {key.shape}.")


def check_start(start, steps=0, name="start"):
    """A global step index ``>= 0`` whose run of ``steps`` stays countable in int32."""
    if not is_concrete(start):
        return
    value = check_integer_scalar(start, name, minimum=0)
    if value + steps > MAX_STEP:
        raise ValueError(f"{name}={value} plus steps={steps} passes {MAX_STEP}, the last "
                         "step an int32 counter can number; start the count again from 0 "
                         "(with a new key, so the batches differ).")


def check_integer_scalar(value, name, *, minimum, maximum=None):
    """A traced count given concretely: an int, or an integer scalar of any
    int dtype (``np.int16(3)``, ``jnp.int32(3)``, a 0-d array); as an int."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int; got {value!r}.")
    if not isinstance(value, numbers.Integral):
        array = np.asarray(value) if hasattr(value, "dtype") else None
        if array is None or array.shape != () or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must be an integer scalar (an int, or a 0-d array of an "
                            f"int dtype); got {value!r}.")
        value = array
    return check_int(int(value), name, minimum=minimum, maximum=maximum)


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}.")
    return bool(value)


def check_real(value, name):
    """A finite real scalar (a tracer passes unchecked)."""
    if not is_concrete(value):
        return
    array = np.asarray(value) if not isinstance(value, (bool, np.bool_)) else None
    if array is None or array.shape != () or not is_real_dtype(array.dtype):
        raise TypeError(f"{name} must be a real number; got {value!r}.")
    if not math.isfinite(float(array)):
        raise ValueError(f"{name} must be a finite number; got {value}.")


def holds_host_arrays(tree):
    """Whether ``tree`` holds a NumPy array: JAX's CPU client reads an aligned
    one in place, so the compiled call, which returns before it has run,
    would see what the caller writes into it after ``fit`` returned."""
    return any(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(tree))


def is_real_dtype(dtype):
    """An integer or real float dtype, the 16-bit floats included (NumPy's
    ``issubdtype(bfloat16, np.floating)`` is false: it is ml_dtypes')."""
    return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))


def check_no_chunk_options(on_chunk, checkpoint):
    if on_chunk is not None:
        raise ValueError("on_chunk needs chunk_size: pass e.g. "
                         "run=fsgd.Run(chunk_size=1000, on_chunk=...).")
    if checkpoint is not None:
        raise ValueError("checkpoint needs chunk_size: the state is written after "
                         "every chunk; pass e.g. run=fsgd.Run(chunk_size=1000, "
                         "checkpoint=...).")


def check_chunks(chunk_size, on_chunk, values):
    """``chunk_size`` as an int; chunks run a host loop, so ``values`` must be concrete."""
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    if on_chunk is not None and not callable(on_chunk):
        raise TypeError(f"on_chunk must be callable as on_chunk(result); got {on_chunk!r}.")
    if not all(map(is_concrete, jax.tree.leaves(values))):
        raise ValueError("Run(chunk_size=) runs a host loop between chunks, so fit cannot be "
                         "traced by jax.jit or jax.vmap with it; drop it there.")
    return chunk_size


def check_lr(lr, optimizer, opt_state=None, params=()):
    if optimizer is None and opt_state is not None:
        raise ValueError("Run(opt_state=) is given but optimizer is None: plain SGD keeps "
                         "no state. Pass the optimizer that made opt_state, or drop "
                         "Run(opt_state=).")
    if optimizer is not None:
        if lr is not None:
            raise ValueError(
                "pass either lr or optimizer, not both: an optax optimizer carries its "
                "own learning rate (e.g. optax.sgd(0.1)).")
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise TypeError(
                "optimizer must be an optax GradientTransformation (with init and update); "
                f"got {type(optimizer).__name__}.")
        return None
    if lr is None:
        raise TypeError("lr is required when no optimizer is given, e.g. lr=0.1.")
    if callable(lr):
        return check_schedule(lr)
    if type(lr) is float:  # the usual case, without NumPy
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0; got {lr}.")
        if lr < SMALLEST_SAFE_LR:
            _check_lr_representable(lr, params)
    elif is_concrete(lr):
        array = np.asarray(lr)
        if array.shape != () or isinstance(lr, (bool, np.bool_)) or not is_real_dtype(array.dtype):
            raise TypeError(f"lr must be a real scalar; got {lr!r}.")
        value = float(array)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"lr must be a finite number > 0; got {value}.")
        if value < SMALLEST_SAFE_LR:
            _check_lr_representable(value, params)
    return lr


def check_schedule(schedule):
    """Checks ``lr`` given as a schedule ``step -> rate`` (an optax schedule):
    called on an int32 step it must give a real scalar. Its values are
    traced in the loop, so only their shape and dtype are checked here."""
    try:
        rate = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as error:
        raise TypeError(
            f"lr is callable, so it is taken as a schedule step -> rate (as optax's "
            f"schedules are), but calling it on an int32 step failed: "
            f"{type(error).__name__}: {error}") from error
    dtype = getattr(rate, "dtype", None)
    if getattr(rate, "shape", None) != () or dtype is None or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        described = f"{dtype}{list(getattr(rate, 'shape', ()))}" if dtype is not None \
            else type(rate).__name__
        raise TypeError(
            f"lr is callable, so it is taken as a schedule step -> rate, but on an int32 "
            f"step it gave {described}, not a real scalar (shape (), a float or int dtype; "
            f"got shape {getattr(rate, 'shape', None)}). Return one rate per step, e.g. "
            "optax.linear_schedule(0.1, 0.01, 1000).")
    return schedule


def check_schedule_rates(schedule, start_step, steps):
    """Refuses a schedule ``lr`` that gives a negative or non-finite rate at
    any step ``t`` in ``[start_step, start_step + steps)`` of the run, as a
    scalar ``lr`` is refused (a rate of 0 passes: schedules warm up from and
    decay to 0). The rates are computed once, in one compiled call, blocks
    of steps vmapped (kept with the schedule: the same schedule checks
    again without compiling); nothing is added to the loop. A run of
    unknown length (a stream), a traced ``start_step`` or a schedule that
    closes over traced values is not checked here."""
    if steps is None or not is_concrete(start_step):
        return
    run = (schedule, int(start_step), int(steps))
    try:
        if run in _PASSED_SCHEDULES:
            return  # checked before (a schedule is called again with the same steps)
        first_bad = _first_bad_rate(schedule, jnp.int32(start_step), jnp.int32(steps))
    except TypeError:  # an unhashable callable: compiled for this call
        first_bad = jax.jit(functools.partial(_first_bad_rate, schedule))(
            jnp.int32(start_step), jnp.int32(steps))
    step, rate = first_bad
    if not (is_concrete(step) and is_concrete(rate)):
        return  # the schedule closes over values traced by jax.jit or jax.vmap
    if int(step) < int(start_step) + int(steps):
        raise ValueError(
            f"lr is a schedule, and every step's rate must be a finite number >= 0; "
            f"lr({int(step)}) = {float(rate):.6g} (this run's steps are {int(start_step)} to "
            f"{int(start_step) + int(steps) - 1}).")
    if len(_PASSED_SCHEDULES) >= 64:
        _PASSED_SCHEDULES.pop(next(iter(_PASSED_SCHEDULES)))
    try:
        _PASSED_SCHEDULES[run] = None
    except TypeError:
        pass  # an unhashable schedule is checked each call


_PASSED_SCHEDULES: dict = {}
"""The (schedule, start_step, steps) runs whose rates passed (the 64 latest)."""


_RATE_BLOCK = 16384
"""Steps whose rates one vmapped call of a schedule computes."""


@functools.partial(jax.jit, static_argnums=0)
def _first_bad_rate(schedule, start, steps):
    """``(t, schedule(t))`` for the first ``t`` in ``[start, start + steps)``
    whose rate is negative or not finite; ``t = start + steps`` if none."""
    end = start + steps
    rate_dtype = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32)).dtype
    rate_dtype = rate_dtype if jnp.issubdtype(rate_dtype, jnp.floating) else jnp.float32

    def block(carry):
        i, _, _ = carry
        offset = i * _RATE_BLOCK + jnp.arange(_RATE_BLOCK, dtype=jnp.int32)
        inside = (offset >= 0) & (offset < steps)  # >= 0: past int32 it wraps
        t = start + jnp.where(inside, offset, 0)  # never past the run (nor int32)
        rates = jax.vmap(schedule)(t).astype(rate_dtype)
        bad = inside & ~((rates >= 0) & jnp.isfinite(rates))
        first = jnp.argmax(bad)
        return i + 1, jnp.where(bad[first], t[first], end), rates[first]

    blocks = steps // _RATE_BLOCK + jnp.where(steps % _RATE_BLOCK > 0, 1, 0)  # no wrap
    _, step, rate = jax.lax.while_loop(
        lambda carry: (carry[0] < blocks) & (carry[1] == end), block,
        (jnp.int32(0), end, jnp.zeros((), rate_dtype)))
    return step, rate


SMALLEST_SAFE_LR = 6e-8
"""Every float dtype (float16 included) holds a learning rate at least this large."""


def _check_lr_representable(lr, params):
    for leaf in jax.tree.leaves(params):
        if not (hasattr(leaf, "dtype") or isinstance(leaf, (float, complex))):
            continue  # a leaf that does not train
        dtype = _dtype(leaf)
        if is_inexact_dtype(dtype) and np.asarray(lr, dtype) == 0:
            raise ValueError(f"lr={lr} is 0 in the params' dtype {dtype}: every update "
                             "would be zero. Pass a larger lr, or params of a wider dtype.")


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


_WARNED: set[Any] = set()
"""Warnings given once per process."""


def warn_if_narrowed(tree, name):
    """Warns once when 64-bit NumPy input will run in 32 bits (x64 off), as
    JAX narrows it without a word."""
    if "narrowed" in _WARNED:
        return
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, (np.ndarray, np.generic)) and leaf.dtype in _WIDE \
                and not jax.config.jax_enable_x64:
            _WARNED.add("narrowed")
            warnings.warn(
                f"{name} holds {leaf.dtype} values but jax_enable_x64 is off, so fit "
                f"computes in {_WIDE[leaf.dtype]} (as every JAX function does). To "
                "train in 64 bits, run under `with jax.enable_x64(True):` or set "
                "jax.config.update('jax_enable_x64', True) at start-up. (Said once.)",
                UserWarning, stacklevel=caller_stacklevel())
            return


_WIDE = {np.dtype(np.float64): "float32", np.dtype(np.complex128): "complex64"}


def check_opt_state(optimizer, opt_state, trainable, *, part="params"):
    """``opt_state`` must be what ``optimizer.init(trainable)`` gives, leaf for
    leaf: structure, shapes and dtypes (``jax.eval_shape``: nothing runs).

    ``trainable`` is what the optimizer sees (``Model.split``); ``part`` names
    it in messages.
    """
    if optimizer is None or opt_state is None:
        return
    leaves, treedef = jax.tree.flatten(trainable)
    signatures = tuple(map(signature, leaves))
    try:
        hash(optimizer)
        expected = _cached_init_shapes(optimizer, treedef, signatures)
    except TypeError:  # an optimizer that does not hash
        expected = _init_shapes(optimizer, treedef, signatures)
    fix = (f" Pass the opt_state that this optimizer returned for these params "
           f"(result.opt_state), or optimizer.init({part}), or drop it to start afresh.")
    if part != "params":
        fix += (" The trainable part is params with None at every leaf that does not train "
                "(frozen, or not a float array), as eqx.filter(params, eqx.is_inexact_array) "
                "gives.")
    got, got_def = jax.tree_util.tree_flatten_with_path(opt_state)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    if got_def != expected_def:
        raise ValueError(
            f"Run(opt_state=) does not have the structure optimizer.init({part}) gives: got "
            f"{got_def}, expected {expected_def}." + fix)
    for (path, leaf), want in zip(got, expected_leaves):
        shape, dtype, weak = signature(leaf) if hasattr(leaf, "dtype") or isinstance(
            leaf, (int, float, complex)) else (None, type(leaf).__name__, False)
        # A weakly typed leaf (a Python number) takes the dtype the loop gives it.
        if shape != tuple(want.shape) or (dtype != want.dtype and not weak):
            raise ValueError(
                f"opt_state{jax.tree_util.keystr(path)} is {dtype}{list(shape or ())}, but "
                f"optimizer.init({part}) gives {want.dtype}{list(want.shape)} there." + fix)


def _init_shapes(optimizer, treedef, signatures):
    params = jax.tree.unflatten(treedef, [spec(s) for s in signatures])
    return jax.eval_shape(optimizer.init, params)


_cached_init_shapes = functools.lru_cache(maxsize=64)(_init_shapes)


def check_outputs_fit(outputs):
    """Refuses, before compiling, a call whose outputs no memory holds.

    A compiled call returns before its outputs exist; outputs too large to
    allocate would then block whoever reads them, for good. So every output
    a call returns is estimated here, from shapes alone, against half this
    machine's memory.

    Args:
      outputs: ``(what, shapes, advice)`` for each output: ``what`` names it
        in the message, ``shapes`` is a pytree of arrays or
        ``jax.ShapeDtypeStruct`` of its full size, ``advice`` says how to
        make it smaller.

    >>> check_outputs_fit([("losses of 10 steps", jax.ShapeDtypeStruct((10,), jnp.float32),
    ...                     "Run fewer steps.")])
    """
    sizes = sorted(((what, tree_bytes(shapes), advice) for what, shapes, advice in outputs),
                   key=lambda output: -output[1])
    needed, memory = sum(size for _, size, _ in sizes), _memory_bytes()
    if needed <= memory / 2:
        return
    listed = "; ".join(f"{what}: {_in_bytes(size)}" for what, size, _ in sizes if size)
    advice = " ".join(dict.fromkeys(advice for _, size, advice in sizes if size >= needed / 4))
    raise ValueError(
        f"the outputs of this call take {_in_bytes(needed)} ({listed}), more than half this "
        f"machine's memory ({_in_bytes(memory)}): no run could hand them back. {advice}")


def stacked(tree, count):
    """Shapes and dtypes of ``tree``'s arrays stacked ``count`` times (a
    record over steps or evaluations), as ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        (count,) + tuple(np.shape(a)), a.dtype if hasattr(a, "dtype") else jnp.result_type(a)),
        tree)


def tree_bytes(tree):
    """Bytes the arrays of ``tree`` (arrays or ``ShapeDtypeStruct``) take."""
    return sum(int(np.prod(np.shape(a))) * _itemsize(a.dtype) for a in jax.tree.leaves(tree)
               if hasattr(a, "dtype"))


def _itemsize(dtype):
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # the two uint32 of a threefry key
    return np.dtype(dtype).itemsize


def _in_bytes(size):
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _dtype(leaf):
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)


def _memory_bytes():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63


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


@functools.lru_cache(maxsize=64)
def is_inexact_dtype(dtype):
    return bool(jnp.issubdtype(dtype, jnp.inexact))  # slow uncached, and called every fit


def _non_finite(data):
    """Positions of the concrete float arrays in ``data`` holding NaN or inf.

    Arrays NumPy can read in place (host and CPU arrays) and small arrays are
    checked on the host; larger arrays on an accelerator all together in one
    compiled call on their device, so a warm ``fit`` pays at most one
    dispatch and one host sync for this check.
    """
    bad, on_device, checked = [], [], []
    for i, a in enumerate(data):
        if not (is_concrete(a) and is_inexact_dtype(a.dtype)) or _recall(a, "finite"):
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
        if i not in bad:
            _remember(a, "finite", True)
    return sorted(bad)


_SEEN: dict[Any, Any] = {}
"""``(id, fact) -> (weakref, value)``: what a check learned about a JAX array.
A JAX array that XLA owns never changes its values, so a check holds for the
array object's life; NumPy arrays can be written to, and so can JAX arrays
that may be views of host memory (:func:`may_share_host_memory`): both are
checked on every call. An entry leaves with its array."""


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


def _recall(a, fact):
    """The value remembered for ``a``, or ``None``."""
    entry = _SEEN.get((id(a), fact))
    return entry[1] if entry is not None and entry[0]() is a else None


def _remember(a, fact, value):
    if not isinstance(a, jax.Array) or not is_concrete(a) or may_share_host_memory(a):
        return
    key = (id(a), fact)
    _SEEN[key] = (weakref.ref(a, lambda _: _SEEN.pop(key, None)), value)


def values_still_pass(data, indices, eval_data, *, check_finite, drop_last, padded):
    """Whether a warm call's arrays (``_warm``) still pass the checks of their
    values: the finiteness of ``data`` and ``eval_data`` and the range of
    ``indices``, read again for arrays that may share host memory (others
    are looked up). ``padded``: whether the remembered run's schedule held
    padding; a schedule that now does, or does not, is not the same run."""
    if check_finite:
        for a in (*data, *eval_data):  # JAX arrays elsewhere never change: passed before
            if is_inexact_dtype(a.dtype) and (isinstance(a, np.ndarray) or _on_cpu(a)) \
                    and not _finite_on_host(np.asarray(a)):  # NumPy reads a CPU array in place
                return False
    if indices is None:
        return True
    try:
        return check_indices(indices, data[0].shape[0], drop_last) == padded
    except ValueError:
        return False


@jax.jit
def _jit_all_finite(arrays):
    return jnp.stack([jnp.isfinite(a).all() for a in arrays])


def check_indices(indices, n, drop_last=True):
    """Checks an explicit schedule; returns whether it holds ``-1`` padding.

    Rows lie in ``[0, n)``; with ``drop_last=False`` a slot may also hold
    ``-1`` (padding: that step is the mean over its real rows), anywhere in
    its step's row, as long as every step keeps one real row. Traced
    indices cannot be looked at: with ``drop_last=False`` they are taken as
    padded.
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
    low_high = _recall(indices, "range")
    if low_high is None:
        view = _host_view(indices)
        if view is not None:
            low_high = int(view.min()), int(view.max())
        else:
            with jax.ensure_compile_time_eval():  # as in _non_finite
                low_high = tuple(map(int, _jit_min_max(indices)))
        _remember(indices, "range", low_high)
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


def batch_of(data, batch_size):
    """Shapes and dtypes of a batch of ``batch_size`` rows of ``data``
    (built once per signature: a ``ShapeDtypeStruct`` is slow to build)."""
    return _batch_of(tuple(signature(a)[:2] for a in data), batch_size)


@functools.lru_cache(maxsize=256)
def _batch_of(signatures, batch_size):
    return tuple(jax.ShapeDtypeStruct((batch_size,) + tuple(shape[1:]), dtype)
                 for shape, dtype in signatures)


def check_loss_per_row(check_loss_on, data, why="with mesh"):
    """Under a mesh, or on padded batches, the loss is also evaluated on
    batches of one row (``check_loss_on(batch)`` traces it)."""
    try:
        check_loss_on(batch_of(data, 1))
    except ValueError as error:
        raise ValueError(f"{why}, loss is evaluated on batches of one row and must "
                         f"be a mean over rows; that failed: {error}") from error


def check_loss(loss, params, batch):
    """Traces ``loss(params, *batch)`` once per signature and checks it is a scalar.

    A shape error inside the loss (params that do not fit the model) surfaces
    here with the shapes of both arguments, instead of deep inside the loop.
    The signature (structure, shapes, dtypes) is built from plain attributes,
    so a warm call with a known signature costs a dictionary look-up.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(params, *batch); got {loss!r}.")
    leaves, treedef = jax.tree.flatten(params)
    signed = (tuple(map(signature, leaves)), tuple(map(signature, batch)))
    try:
        hash(loss)
    except TypeError:
        return _trace_loss(loss, treedef, signed)
    return _cached_trace_loss(loss, treedef, signed)


def signature(x):
    """``(shape, dtype, weak_type)`` as JAX will see ``x``, without building an aval."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return tuple(x.shape), x.dtype, bool(getattr(x, "weak_type", False))  # keys: none
    if isinstance(x, np.ndarray):
        return x.shape, jax.dtypes.canonicalize_dtype(x.dtype), False
    spec = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))  # scalars
    # JAX types Python numbers weakly (they take the dtype of what they meet);
    # NumPy scalars and bools keep their own.
    weak = isinstance(x, (int, float, complex)) and not isinstance(x, (bool, np.generic))
    return spec.shape, spec.dtype, weak


def spec(signature):
    shape, dtype, weak_type = signature
    return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak_type)


@functools.lru_cache(maxsize=256)
def _cached_trace_loss(loss, treedef, signature):
    return _trace_loss(loss, treedef, signature)


def _trace_loss(loss, treedef, signature):
    params_spec = jax.tree.unflatten(treedef, [spec(s) for s in signature[0]])
    batch_spec = tuple(spec(s) for s in signature[1])
    try:
        out = jax.eval_shape(loss, params_spec, *batch_spec)
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"loss(params, *batch) failed for params of shape {shapes(params_spec)} and a "
            f"batch of shape {shapes(batch_spec)}; check that params fit the model "
            f"and data. The loss said: {error}") from error
    except Exception as error:
        refuse_outside_variables(error)
        raise
    check_loss_value(out)
    return out


def check_loss_value(out):
    """A loss (without state or aux) must return a real scalar."""
    if isinstance(out, (tuple, list)):
        raise ValueError(
            f"loss must return a real scalar; it returned a {type(out).__name__} of "
            f"{len(out)}: {shapes(out)}. If it returns (value, aux), pass "
            "model=fsgd.Model(has_aux=True); if (value, new_state), pass the initial model "
            "state as model=fsgd.Model(state=...).")
    if not hasattr(out, "shape") or out.shape != () \
            or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"loss must return a real scalar; got {shapes(out)}. Reduce it, e.g. with "
            ".mean().")


def shapes(tree):
    return jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", tree)


_PACKAGE = __name__.split(".")[0]


def caller_stacklevel():
    """The ``stacklevel`` that makes a warning point at the first caller
    outside this package, however deep inside it the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == _PACKAGE:
        frame, level = frame.f_back, level + 1
    return level
