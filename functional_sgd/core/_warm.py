"""A warm call's front door: ``fit`` called again with the arrays of an earlier call.

``fit``'s checks (shapes, dtypes, finiteness, index ranges, the loss traced
once) take ~25 us of Python a call, as long as a small run itself (the
lesson in batches of 10 runs in ~36 us). Their verdict depends only on the
arguments, and a JAX array never changes its values: a call that passes the
same JAX arrays, loss and options as an earlier call that passed the checks
would pass them again. Such a call goes straight to the compiled loop; only
``lr`` (checked anew) and ``params`` (the same shape and dtype as before, so
the same verdict) may differ, which covers a Python loop over learning rates
and a run continued from ``result.params``.

NumPy data (which can be written to between calls), pytrees of params,
chunks, meshes, checkpoints and a user's model (``rng``, ``state``,
``has_aux``, ``trainable``, ``opt_state``) always take the full path.
Arrays are held by weak references: remembering a call keeps no data alive.
"""

import weakref
from typing import Any, NamedTuple

import jax

try:  # the type of every concrete JAX array (tracers and NumPy arrays are not)
    from jax._src.array import ArrayImpl as _CONCRETE
except ImportError:  # JAX moved it: no call is remembered, every call is checked
    _CONCRETE = None

KEPT = 16
"""Calls remembered at once; past this many, all are forgotten."""


class Warm(NamedTuple):
    """What a call that passed the checks leaves for the next one like it."""

    arrays: tuple            # weak references to the call's data, key and indices
    params_signature: tuple  # (shape, dtype, weak_type) of the params checked
    spec: Any                # the LoopSpec
    step: Any                # Carry.step and Carry.stop before the first step
    stop: Any


_calls = {}


def key(loss, params, data, batch_key, indices, optimizer, options):
    """The dictionary key of a call, or ``None`` when the call is not one
    that may skip its checks. ``options``: the call's hashable settings."""
    if _CONCRETE is None or type(params) is not _CONCRETE or type(data) is not tuple:
        return None
    arrays = data if batch_key is None and indices is None else \
        data + tuple(a for a in (batch_key, indices) if a is not None)
    for a in arrays:
        if type(a) is not _CONCRETE:
            return None
    call = (loss, optimizer, tuple(map(id, arrays)), options, tuple(map(type, options)),
            jax.config.jax_enable_x64)
    try:
        hash(call)
    except TypeError:  # an option that is an array (tol=jnp.array(...)): not remembered
        return None
    return call, arrays


def recall(call, params):
    """The :class:`Warm` of an earlier call equal to ``call`` with ``params``
    of the same signature, or ``None``."""
    warm = _calls.get(call[0])
    if warm is None or warm.params_signature != _signature(params):
        return None
    for ref, a in zip(warm.arrays, call[1]):
        if ref() is not a:  # an id reused by a new array
            return None
    return warm


def remember(call, params, spec, carry):
    if len(_calls) >= KEPT:
        _calls.clear()
    _calls[call[0]] = Warm(tuple(map(weakref.ref, call[1])), _signature(params), spec,
                           carry.step, carry.stop)


def _signature(params):
    return params.shape, params.dtype, params.weak_type
