"""Checks of scalar arguments (counts, flags, keys, step indices), done in
plain Python while values are concrete.

Every check names the argument, the value it got and what was expected.
Values that are tracers (``fit`` called under ``jax.jit`` or ``jax.vmap``)
cannot be inspected; their checks are skipped so that tracing still works.
"""

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


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


def is_real_dtype(dtype):
    """An integer or real float dtype, the 16-bit floats included (NumPy's
    ``issubdtype(bfloat16, np.floating)`` is false: it is ml_dtypes')."""
    return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))


@functools.lru_cache(maxsize=64)
def is_inexact_dtype(dtype):
    return bool(jnp.issubdtype(dtype, jnp.inexact))  # slow uncached, and called every fit


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
