"""A user's own model: which leaves of ``params`` train, and how the loss is called.

``params`` may be any pytree: an equinox ``Module``, a flax nnx ``State``,
a dict. Its leaves that are arrays of an inexact dtype train (NumPy scalars
too); every other leaf passes through unchanged, with no gradient, no
update and no optimizer state:

* other arrays (integers, bools, PRNG keys) ride along as traced values, so
  a new value compiles nothing;
* everything else (functions, ``custom_jvp`` activations, Python ints,
  strings) is compile-time: :func:`wrap` puts each in a :class:`Static`
  pytree node with no children, so it travels in the tree's structure
  through ``jit``, ``scan`` and ``vmap``, and :func:`unwrap` gives it back.

A Python float (or complex) trains, as a float array, when it is the whole
params (the lesson's ``f(x) = x**2`` from 3.0) or when every container
above it is Python's own (dict, list, tuple, namedtuple: ``{"b": 0.0}``).
Inside any other pytree node (an equinox ``Module``, a registered
dataclass, an nnx ``State``), a tuple within it too, it is compile-time,
as equinox has it (``eqx.is_inexact_array``): ``eqx.nn.Dropout``'s rate
and ``eqx.nn.MaxPool2d``'s ``-inf`` shape the program and come back as
they were. So does a Python float that ``trainable`` freezes: a frozen
Python scalar is never traced.

A :class:`Model` (part of the loop's compile-time spec) records which leaves
train (``trainable=`` freezes more) and how the loss is called: with the
keyword ``key=`` (``rng``), with the model ``state`` as its second argument
and a new state returned, with an ``aux`` output. :data:`PLAIN` is the
lesson's case, ``loss(params, *batch) -> scalar`` with every leaf training,
and costs nothing: ``fit`` recognises it before any of this runs.

>>> import jax.numpy as jnp
>>> from functional_sgd import Model as Parts  # fit's option: rng, state, has_aux, trainable
>>> params = {"w": jnp.ones(2), "n": 3, "act": jnp.tanh}
>>> wrapped, _, model = choose(params, Parts())
>>> model.trains, jax.tree.leaves(wrapped)
((True,), [Array([1., 1.], dtype=float32)])
>>> unwrap(wrapped) == params
True
>>> _, _, model = choose({"b": 0.0, "frozen": 1.0},
...                      Parts(trainable={"b": True, "frozen": False}))
>>> model.trains  # the frozen Python float is compile-time: not a leaf at all
(True,)
"""

import collections
import dataclasses
import functools
import re
from typing import Any

import jax
import numpy as np

from .._types import fit_result
from ..drivers import as_host_array
from . import _arguments, _flax_nnx


class Static:
    """A leaf that is not an array, kept in the tree's structure (no children).

    Equal values of the same type compare equal (so ``jit`` reuses its
    compiled program for a new model with the same functions in it); a value
    that cannot be hashed compares by identity. The ``repr`` names functions
    by module and qualified name, never by address, so a checkpoint's
    description of the params is the same in every process.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def _hashable(self):
        try:
            hash(self.value)
        except TypeError:
            return False
        return True

    def __hash__(self):
        return hash((type(self.value), self.value)) if self._hashable() else id(self.value)

    def __eq__(self, other):
        if not isinstance(other, Static) or type(other.value) is not type(self.value):
            return False
        if other.value is self.value:
            return True
        if not (self._hashable() and other._hashable()):
            return False
        try:
            return bool(self.value == other.value)
        except Exception:  # an __eq__ that returns no bool: not the same
            return False

    def __repr__(self):
        value = self.value
        name = getattr(value, "__qualname__", None)
        if callable(value) and isinstance(name, str):
            return f"{getattr(value, '__module__', '?')}.{name}"
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


jax.tree_util.register_pytree_node(Static, lambda s: ((), s), lambda s, _: s)


def is_static(x):
    return isinstance(x, Static)


def is_array(x):
    """Whether ``x`` is a value ``jit`` traces: an array, a NumPy scalar or a
    Python float or complex (Python ints and bools stay compile-time)."""
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, complex))


def torch_as_arrays(params):
    """``params`` with each CPU torch tensor among its leaves as a NumPy copy
    (read as data is, then copied: the tensor stays the caller's, and JAX
    may read a NumPy input in place); everything else as it is."""
    if isinstance(params, (jax.Array, np.ndarray)):
        return params  # the usual case, without a walk
    if not any(map(_is_torch, jax.tree.leaves(params))):
        return params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return treedef.unflatten([
        np.array(as_host_array(a, "params" + jax.tree_util.keystr(path))) if _is_torch(a)
        else a for path, a in leaves])


def _is_torch(a):
    return type(a).__module__.startswith("torch")  # torch is never imported here


def _is_float(x):
    """An array of an inexact dtype (or a Python float): a leaf that trains."""
    return isinstance(x, (float, complex)) or _is_float_array(x)


def _is_float_array(x):
    return (isinstance(x, (jax.Array, np.ndarray, np.generic))
            and _arguments.is_inexact_dtype(x.dtype))


def _is_python_scalar(x):
    return isinstance(x, (float, complex))


_PYTHON_CONTAINERS = (dict, list, tuple, collections.OrderedDict, collections.defaultdict)


def _is_other_node(x):
    """Stops a walk at every pytree node that is not Python's own container."""
    return not (x is None or type(x) in _PYTHON_CONTAINERS
                or (isinstance(x, tuple) and hasattr(type(x), "_fields")))  # a namedtuple


@functools.lru_cache(maxsize=256)
def _in_python_containers(treedef):
    """Per leaf of a tree of this structure: whether every container above
    it is Python's own (dict, list, tuple, namedtuple) rather than another
    pytree node (cached: a warm call with a Module pays no walk here)."""
    flags = []
    for top in jax.tree.leaves(treedef.unflatten([0] * treedef.num_leaves),
                               is_leaf=_is_other_node):
        below = jax.tree.leaves(top)
        flags.extend([len(below) == 1 and below[0] is top] * len(below))
    return tuple(flags)


def wrap(tree):
    """``tree`` with every leaf that is not an array in a :class:`Static` node."""
    return jax.tree.map(lambda x: x if is_array(x) else Static(x), tree)


def unwrap(tree):
    """The inverse of :func:`wrap`."""
    return jax.tree.map(lambda x: x.value if isinstance(x, Static) else x, tree,
                        is_leaf=is_static)


@dataclasses.dataclass(frozen=True)
class Model:
    """How the loop treats ``params`` and calls the loss (compile-time).

    Attributes:
      trains: for every leaf of the wrapped params, whether it trains;
        ``None``: all of them (and nothing was wrapped).
      rng: the loss takes the keyword ``key=``.
      state: the loss is ``loss(params, state, *batch) -> (value, new_state, ...)``.
      has_aux: the loss also returns an aux pytree (last).
      treedef: the structure of the wrapped params (with ``trains``).
      trainable_def: the structure of the params with ``None`` at every
        leaf that does not train (see :meth:`split`).
    """

    trains: Any = None
    rng: bool = False
    state: bool = False
    has_aux: bool = False
    treedef: Any = None  # of the wrapped params, with ``trains``
    trainable_def: Any = None  # of the params with None at every leaf that does not train

    def __post_init__(self):  # read on every call (jit hashes the spec): computed once
        object.__setattr__(self, "_hash", hash((self.trains, self.rng, self.state,
                                                self.has_aux, self.treedef)))
        object.__setattr__(self, "plain", self.trains is None and not (
            self.rng or self.state or self.has_aux))

    def __hash__(self):
        return self._hash

    def split(self, params):
        """``(trainable, frozen)`` of the (wrapped) ``params``.

        ``trainable`` is ``params`` with ``None`` at every leaf that does not
        train, non-array ones included (what ``eqx.filter(params,
        eqx.is_inexact_array)`` gives, so an optimizer's state has the
        structure equinox users know); ``frozen`` holds the rest, with
        ``None`` where a leaf trains (``None`` when every leaf trains).
        """
        if self.trains is None:
            return params, None
        leaves = self.treedef.flatten_up_to(params)
        return (self.trainable_def.unflatten([a for a, t in zip(leaves, self.trains) if t]),
                self.treedef.unflatten([None if t else a for a, t in zip(leaves, self.trains)]))

    def join(self, trainable, frozen):
        """The inverse of :meth:`split`."""
        if self.trains is None:
            return trainable
        trained = iter(self.trainable_def.flatten_up_to(trainable))
        held = self.treedef.flatten_up_to(frozen)
        return self.treedef.unflatten([next(trained) if t else a
                                       for a, t in zip(held, self.trains)])

    def call(self, loss, params, state, key, batch):
        """``loss`` on ``params`` (wrapped) as this model calls it; ``(value, new_state, aux)``."""
        if self.plain:
            return loss(params, *batch), None, None
        args = (unwrap(params), unwrap(state), *batch) if self.state \
            else (unwrap(params), *batch)
        out = loss(*args, key=key) if self.rng else loss(*args)
        if not (self.state or self.has_aux):
            return out, None, None
        value, *rest = out
        new_state = wrap(rest.pop(0)) if self.state else None
        return value, new_state, rest[0] if self.has_aux else None


PLAIN = Model()


def choose(params, parts):
    """``(params, state, model)`` for ``fit``'s params and its ``Model``
    option ``parts`` (``rng``, ``state``, ``has_aux``, ``trainable``): the
    params and state with their non-array leaves wrapped, and the loop's
    :class:`Model`.

    The lesson's case (every leaf a float array, no ``rng``, ``state``,
    ``has_aux`` or ``trainable``) is checked first and returns :data:`PLAIN`
    with ``params`` untouched: a warm ``fit`` of one array pays next to nothing here.
    Which Python floats train is set out in this module's docstring.
    """
    rng, state, has_aux, trainable = parts.rng, parts.state, parts.has_aux, parts.trainable
    lesson = rng is None and state is None and has_aux is False and trainable is None
    if lesson and (_is_python_scalar(params) or (
            isinstance(params, jax.Array) and _arguments.is_inexact_dtype(params.dtype))):
        return params, None, PLAIN
    leaves, treedef = jax.tree.flatten(params)  # the one walk over params (slow for Modules)
    _flax_nnx.refuse_updated_variables(treedef)
    if lesson and all(map(_is_float_array, leaves)):
        return params, None, PLAIN
    has_aux = _arguments.check_bool(has_aux, "has_aux")
    if rng is not None:
        _arguments.check_key(rng, "rng")
    arrays = tuple(map(is_array, leaves))
    scalars = tuple(map(_is_python_scalar, leaves))
    if any(scalars):  # static unless Python's own containers hold them all the way up
        arrays = tuple(a and not (s and not plain) for a, s, plain in
                       zip(arrays, scalars, _in_python_containers(treedef)))
    statics, traced, wrapped = _wrapped(params, treedef, leaves, arrays)
    mask = _trainable_mask(trainable, wrapped, traced)
    floats = sum(map(_is_float, traced))
    if not all(mask) and any(scalars):  # a frozen Python scalar is never traced either
        frozen = iter(not m for m in mask)
        arrays = tuple(a and not (next(frozen) and s) for a, s in zip(arrays, scalars))
        mask = [m for m, a in zip(mask, traced) if m or not _is_python_scalar(a)]
        statics, traced, wrapped = _wrapped(params, treedef, leaves, arrays)
    trains = tuple(bool(m) and _is_float(a) for a, m in zip(traced, mask))
    if not any(trains):
        if floats:
            raise ValueError(f"Model(trainable=) freezes all {floats} float leaves of params: "
                             "nothing would train. Leave at least one leaf trainable.")
        kinds = sorted({str(getattr(a, 'dtype', type(a).__name__)) for a in traced})
        raise ValueError(
            "params has nothing to train: only leaves of an inexact dtype train, and its "
            f"array leaves are {', '.join(kinds) if kinds else 'none at all'}"
            + (" (its Python floats sit inside a Module or other pytree node, where they "
               "are compile-time constants, as in equinox)" if any(scalars) else "")
            + ". Give params at least one float array (e.g. jnp.zeros(3), not "
            "jnp.zeros(3, int)).")
    if all(trains) and not statics:
        return wrapped, wrap(state), Model(None, rng is not None, state is not None, has_aux)
    return wrapped, wrap(state), Model(trains, rng is not None, state is not None, has_aux,
                                       *_structures(treedef, statics, arrays, trains))


def _wrapped(params, treedef, leaves, arrays):
    """``(statics, traced leaves, wrapped params)``: the leaves of ``params``
    that are not ``arrays`` each in a :class:`Static` node."""
    statics = tuple(Static(a) for a, array in zip(leaves, arrays) if not array)
    traced = [a for a, array in zip(leaves, arrays) if array]
    wrapped = params if not statics else \
        _structures(treedef, statics, arrays, None)[0].unflatten(traced)
    return statics, traced, wrapped


@functools.lru_cache(maxsize=256)
def _structures(treedef, statics, arrays, trains):
    """The structures of the wrapped params and (with ``trains``) of their
    trainable part, from the params' own ``treedef``: an equinox module is
    slow to rebuild, so a warm call looks them up."""
    statics_left = iter(statics)
    wrapped_def = jax.tree.structure(treedef.unflatten(
        [0 if array else next(statics_left) for array in arrays]))  # 0: any leaf would do
    if trains is None:
        return wrapped_def, None
    train = iter(trains)
    trainable_def = jax.tree.structure(treedef.unflatten(
        [0 if array and next(train) else None for array in arrays]))
    return wrapped_def, trainable_def


def _trainable_mask(trainable, wrapped, leaves):
    """One bool per leaf of ``wrapped`` from ``trainable`` (a prefix pytree
    of bools, or a function of a leaf)."""
    if trainable is None:
        return [True] * len(leaves)
    if callable(trainable) and not all(map(_is_bool, jax.tree.leaves(trainable))):
        # a function (an equinox module of bools is callable too, but all bools)
        mask = [trainable(a) for a in leaves]
        for a, m in zip(leaves, mask):
            if not _is_bool(m):
                raise TypeError(
                    f"Model(trainable=fn): fn(leaf) must return True or False; for a leaf of type "
                    f"{type(a).__name__} it returned {m!r}.")
        return [bool(m) for m in mask]
    try:
        per_leaf = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), trainable,
                                wrapped)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "Model(trainable=) must be a pytree of True/False with the structure of params (or a "
            "prefix of it: one bool for a whole subtree), or a function leaf -> bool; "
            f"it does not fit params: {error}") from error
    for m in jax.tree.leaves(trainable):
        if not _is_bool(m):
            raise TypeError(f"Model(trainable=)'s leaves must be True or False; got {m!r}.")
    return [bool(m) for m in jax.tree.leaves(per_leaf)]


def _is_bool(m):
    """A concrete bool: Python's, NumPy's or a 0-d bool array (not a tracer:
    which leaves train decides the program's shape)."""
    return isinstance(m, (bool, np.bool_)) or (
        isinstance(m, (jax.Array, np.ndarray)) and _arguments.is_concrete(m)
        and m.shape == () and m.dtype == bool)


def unwrapped(result):
    """A ``FitResult`` with the non-array leaves of its params, trajectory
    and state given back (see :func:`unwrap`)."""
    return result._replace(params=unwrap(result.params), state=unwrap(result.state),
                           trajectory=unwrap(result.trajectory))


def result(carry, record):
    """``fit_result`` of a run of a user's model, unwrapped."""
    return unwrapped(fit_result(carry, record))


def unwrapping(on_chunk, model):
    """``on_chunk``, given each chunk's result unwrapped (as it is, for a plain model)."""
    if on_chunk is None or model.plain:
        return on_chunk
    return lambda chunk: on_chunk(unwrapped(chunk))


@functools.lru_cache(maxsize=64)
def takes_extra_args(optimizer_type):
    """Whether an optax transformation of this type takes ``value=``,
    ``grad=``, ``value_fn=`` (``GradientTransformationExtraArgs``; optax is
    not imported: it is an optional dependency)."""
    return any(c.__name__ == "GradientTransformationExtraArgs" for c in optimizer_type.__mro__)
