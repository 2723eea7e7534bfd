"""Functions compared by what they compute: the compiled loop's key for a
loss, an optax optimizer or a schedule.

``jax.jit`` compares its static arguments with ``==``, which for functions
is identity: a fresh ``optax.adam(1e-3)`` or ``lambda`` per call compiled
the loop again every call. :func:`computation_key` gives a hashable key
instead, equal for two values only when they are sure to compute the same:

* functions: the same code object, equal defaults, equal values in their
  closure cells and equal values of the globals their code reads (all
  compared recursively, so optax's closures of closures compare);
* ``functools.partial``, bound methods, tuples, lists, dicts, dataclasses
  whose state is their fields: their parts, with their exact type;
* numbers and strings by value and exact type (``1`` is not ``1.0``;
  ``-0.0`` is not ``0.0``); small arrays (NumPy, JAX, PRNG keys) by dtype,
  weak type, shape and bytes, copied when the key is made (a later change
  in place makes a new key);
* everything else (other objects, tracers, arrays over
  ``SMALL_ARRAY_BYTES``, anything deeper than ``MAX_DEPTH``) by identity,
  which never calls two different things equal. A large NumPy array
  changed in place is, as with a function reused, not seen.

>>> import optax
>>> computation_key(optax.adam(1e-3)) == computation_key(optax.adam(1e-3))
True
>>> computation_key(optax.adam(1e-3)) == computation_key(optax.adam(1e-2))
False
"""

import dataclasses
import functools
import types

import jax
import numpy as np

MAX_DEPTH = 12
"""How deep values are followed (an optax chain of chains is ~6 deep);
deeper ones compare by identity."""

SMALL_ARRAY_BYTES = 4096
"""Arrays up to this size compare by value (their bytes are copied into
the key); larger ones by identity."""


def computation_key(value):
    """A hashable key of ``value``: equal keys compute the same (see the
    module docstring). The key holds the objects it compares by identity,
    so no other object can take their ``id`` while it lives."""
    return _key(value, 0)


class _Same:
    """Compares by identity, holding its object (so its ``id`` stays its own)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value


_EXACT = (type(None), bool, int, str, bytes)
_BY_IDENTITY = (types.ModuleType, type, types.BuiltinFunctionType)


def _key(value, depth):
    kind = type(value)
    if kind in _EXACT:
        return (kind, value)
    if kind is float:
        return (float, value.hex())  # tells -0.0 from 0.0
    if kind is complex:
        return (complex, value.real.hex(), value.imag.hex())
    if depth > MAX_DEPTH or isinstance(value, _BY_IDENTITY):
        return _Same(value)
    more = functools.partial(_key, depth=depth + 1)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return _array_key(value)
    if kind in (tuple, list) or (isinstance(value, tuple) and hasattr(kind, "_fields")):
        return (kind, tuple(map(more, value)))
    if kind is dict:
        return (dict, tuple((more(k), more(v)) for k, v in value.items()))
    if kind is functools.partial and not vars(value):
        return (kind, more(value.func), more(value.args), more(value.keywords))
    if kind is types.FunctionType:
        return _function_key(value, more)
    if kind is types.MethodType:
        return (kind, more(value.__func__), more(value.__self__))
    if isinstance(value, jax.tree_util.PyTreeDef):
        return (jax.tree_util.PyTreeDef, value)
    if dataclasses.is_dataclass(value) and _state_is_fields(value):
        return (_Same(kind), tuple(more(getattr(value, f.name))
                                   for f in dataclasses.fields(value)))
    return _Same(value)


def _array_key(array):
    """Small concrete arrays by dtype, weak type, shape and bytes; others by identity."""
    if isinstance(array, jax.core.Tracer) or type(array) is np.memmap \
            or getattr(array, "nbytes", SMALL_ARRAY_BYTES + 1) > SMALL_ARRAY_BYTES \
            or array.dtype == object:
        return _Same(array)
    if isinstance(array, jax.Array):
        if not array.is_fully_addressable:
            return _Same(array)
        bits = jax.random.key_data(array) if jax.dtypes.issubdtype(
            array.dtype, jax.dtypes.prng_key) else array
        return (jax.Array, str(array.aval), array.aval.weak_type, array.sharding,
                np.asarray(bits).tobytes())
    return (type(array), str(array.dtype), array.shape, array.tobytes())


def _function_key(function, more):
    """Code (by identity), defaults, closure cells and the globals the code reads."""
    code = function.__code__
    cells = []
    for cell in function.__closure__ or ():
        try:
            cells.append(more(cell.cell_contents))
        except ValueError:  # an empty cell
            cells.append(_Same(cell))
    namespace = function.__globals__
    read = tuple((name, _global_key(namespace[name], more))
                 for name in _names(code) if name in namespace)
    return (types.FunctionType, _Same(code), _Same(namespace), more(function.__defaults__),
            more(function.__kwdefaults__), tuple(cells), read,
            more(vars(function)) if vars(function) else None)


def _global_key(value, more):
    """A global a function reads: a function or a module by identity (the
    same object each call), any other value as a value."""
    if callable(value) or isinstance(value, types.ModuleType):
        return _Same(value)
    return more(value)


def _names(code):
    """Every name ``code`` and the code nested in it (lambdas, comprehensions) read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_names(const))
    return tuple(sorted(names))


def _state_is_fields(value):
    """Whether an instance holds nothing but its dataclass fields (no
    ``__slots__`` beyond them, no other attributes)."""
    try:
        held = set(vars(value))
    except TypeError:  # __slots__
        return False
    return held == {f.name for f in dataclasses.fields(value)}
