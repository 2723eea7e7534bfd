"""What a value adds to the key under which a call is remembered (``_warm``).

No option is listed by hand: every field of every option value joins the
key. A plain value (``None``, int, float, str, bool) joins by value and
type, a concrete JAX array or key by identity, a nested dataclass (a
``SpeedPlan``) field by field, a tuple of arrays item by item, any other
hashable value by value. A value holding anything else (a NumPy array,
which its owner may write to; a tracer) has no part: a call with it is
checked every time.

Option values are frozen, so each works out its :class:`Part` once, when it
is built (:func:`keyed`): a remembered call reads it instead of walking the
option's fields again.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, TypeVar

try:  # the type of every concrete JAX array (tracers and NumPy arrays are not)
    from jax._src.array import ArrayImpl as CONCRETE
except ImportError:  # JAX moved it: no call is remembered, every call is checked
    CONCRETE = None  # type: ignore[assignment,misc]
try:  # a concrete typed key (jax.random.key); a traced one is a tracer
    from jax._src.random.prng import PRNGKeyArray as CONCRETE_KEY
except ImportError:  # JAX moved it: calls with a typed key are checked every time
    CONCRETE_KEY = None  # type: ignore[assignment,misc]

PLAIN = (type(None), int, float, str, bool)
"""Values that join a key as they are (with their type: ``True`` is not ``1``)."""

ARRAY = object()
"""Stands in a key for an array named by identity."""

_PART = "_key_part"  # where a keyed value keeps its part


class Part(NamedTuple):
    """A value's part of a key: ``flat``, hashable, and the arrays it names."""

    flat: tuple
    arrays: tuple


def part_of(*values: Any) -> Part | None:
    """The :class:`Part` of ``values``, or ``None`` when a call with them
    cannot be remembered."""
    flat: list = []
    arrays: list = []
    for value in values:
        if not _flatten(value, flat, arrays):
            return None
    return Part((*flat, *map(type, flat)), tuple(arrays))


def kept_part(option: Any) -> Part | None:
    """The part an option value worked out when it was built (:func:`keyed`);
    one unpickled from a version that kept none works it out on each call
    (the value itself is not written to)."""
    kept = option.__dict__.get(_PART, _MISSING)
    return part_of(option) if kept is _MISSING else kept  # type: ignore[no-any-return]


_MISSING = object()


T = TypeVar("T")


def keyed(cls: type[T]) -> type[T]:
    """``cls``, whose values work out their :class:`Part` when built (after
    their own checks). Put it under ``@dataclasses.dataclass``, which then
    calls the ``__post_init__`` it adds."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self: Any) -> None:
        if own is not None:
            own(self)
        object.__setattr__(self, _PART, part_of(self))

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return cls


def _flatten(value: Any, flat: list, arrays: list) -> bool:
    """Appends ``value``'s part to ``flat`` (its arrays to ``arrays``);
    ``False`` when a call with it cannot be remembered."""
    kind = type(value)
    if kind in PLAIN:
        flat.append(value)
        return True
    if kind is CONCRETE or kind is CONCRETE_KEY:
        arrays.append(value)
        flat.append(ARRAY)
        return True
    names = _field_names(kind)  # type: ignore[arg-type]  # a type hashes
    if names is not None:
        flat.append(kind)
        return all(_flatten(getattr(value, name), flat, arrays) for name in names)
    if kind is tuple and any(hasattr(a, "shape") for a in value):
        flat.append(len(value))
        return all(_flatten(a, flat, arrays) for a in value)
    try:
        hash(value)
    except TypeError:
        return False
    if hasattr(value, "__array__"):  # a NumPy array or scalar: its values may change
        return False
    flat.append(value)
    return True


@functools.lru_cache(maxsize=256)
def _field_names(kind: Any) -> tuple[str, ...] | None:
    """The field names of the dataclass ``kind``, or ``None``."""
    if dataclasses.is_dataclass(kind):
        return tuple(field.name for field in dataclasses.fields(kind))
    return None
