"""What makes a run the same run: stable descriptions of specs, functions and data.

A checkpoint may only be resumed by the run that wrote it, possibly in
another process: every description here is the same in every process for
the same run (no memory addresses, no ``id``), and differs when anything
that decides the run's bits differs: data values, start params, the loss's
code and the values it closes over, an optimizer's hyperparameters.

>>> import optax
>>> describe(optax.adam(0.1)) == describe(optax.adam(0.1))
True
>>> describe(optax.adam(0.1)) == describe(optax.adam(0.001))
False
"""

import dataclasses
import functools
from typing import Any
import hashlib
import os
import types
import weakref

import jax
import numpy as np

from ._chunks import is_key
from ._rows import row_reader

MAX_DEPTH = 12
"""How deep closures are followed (an optax chain of chains is ~6 deep)."""


def describe(value, *, contents=True):
    """A JSON-able description of ``value`` that is equal in every process
    for equal values (see the module docstring). ``contents=False`` describes
    arrays by shape and dtype only (cheap for a loss closing over large data)."""
    return _Describer(contents).describe(value, 0)


class _Describer:
    def __init__(self, contents):
        self.contents = contents

    def describe(self, value, depth):
        more = lambda v: self.describe(v, depth + 1)
        if depth > MAX_DEPTH:
            return f"<{type(value).__qualname__}>"
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if is_key(value):  # a few words: shown as they are
            return np.asarray(jax.random.key_data(value)).tolist()
        if isinstance(value, jax.tree_util.PyTreeDef):  # data's structure (dict keys)
            return str(value)
        if isinstance(value, np.memmap) and self.contents:
            return memmap_sample_hash(value)
        if isinstance(value, (np.generic, np.ndarray, jax.Array)):
            return content_hash(value) if self.contents else \
                f"{value.dtype}{list(np.shape(value))}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {"kind": type(value).__qualname__,
                    **{f.name: more(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        if isinstance(value, (tuple, list)):
            return [more(v) for v in value]
        if isinstance(value, dict):
            return {str(k): more(v) for k, v in sorted(value.items(), key=str)}
        if isinstance(value, functools.partial):
            return {"partial": more(value.func), "args": more(value.args),
                    "keywords": more(value.keywords)}
        if isinstance(value, types.FunctionType):
            return self.function(value, depth)
        if callable(value) and hasattr(value, "__wrapped__"):  # jax.jit and other wrappers
            return {"wraps": more(value.__wrapped__)}
        return f"<{type(value).__module__}.{type(value).__qualname__}>"

    def function(self, function, depth):
        """Its qualified name, a hash of its code, and what it closes over."""
        cells = []
        for cell in function.__closure__ or ():
            try:
                cells.append(self.describe(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(None)
        return {"function": f"{function.__module__}.{function.__qualname__}",
                "code": _code_hash(function.__code__),
                "defaults": self.describe(function.__defaults__, depth + 1),
                "closure": cells}


def _code_hash(code):
    digest = hashlib.blake2b(code.co_code, digest_size=8)
    for const in code.co_consts:
        digest.update(_code_hash(const).encode() if isinstance(const, types.CodeType)
                      else repr(const).encode())
    digest.update(repr(code.co_names).encode())
    return digest.hexdigest()


_HASHES: dict[Any, Any] = {}
"""``id -> (weakref, hash)`` of JAX arrays: their values never change, so one
hash serves for the array's life. NumPy arrays can be written to and are
hashed on every call."""


def content_hash(array):
    """``dtype[shape]:digest`` of an array's bytes (a JAX array's only once)."""
    entry = _HASHES.get(id(array))
    if entry is not None and entry[0]() is array:
        return entry[1]
    host = np.asarray(array)
    digest = hashlib.blake2b(np.ascontiguousarray(host).reshape(-1).view(np.uint8),
                             digest_size=16)
    described = f"{host.dtype}{list(host.shape)}:{digest.hexdigest()}"
    if isinstance(array, jax.Array):
        key = id(array)
        try:
            _HASHES[key] = (weakref.ref(array, lambda _: _HASHES.pop(key, None)), described)
        except TypeError:  # not weak-referenceable
            pass
    return described


SAMPLED_ROWS = 1024
"""Rows of a memmap that its description hashes (spread evenly, first and last included)."""


def memmap_sample_hash(array):
    """A memmap's description without reading it whole (4 GB take seconds to
    hash): its file's name, size and modification time, the array's place in
    it (offset, shape, dtype, strides) and a hash of ``SAMPLED_ROWS`` of its
    rows, read from the file. A change to rows it did not sample that keeps
    the file's size and modification time (rewriting it and resetting the
    time on purpose) goes unseen: the description is a guard against
    resuming on other data, not a proof of the same bytes."""
    filename = getattr(array, "filename", None)
    place = {"file": None if filename is None else os.fspath(filename),
             "offset": getattr(array, "offset", 0),
             "strides": list(array.strides)}
    if place["file"] is not None and os.path.exists(place["file"]):
        status = os.stat(place["file"])
        place.update(size=status.st_size, mtime_ns=status.st_mtime_ns)
    if array.ndim == 0 or array.shape[0] == 0:
        return {"memmap": place, "values": content_hash(np.asarray(array))}
    rows = np.unique(np.linspace(0, array.shape[0] - 1, SAMPLED_ROWS).astype(np.int64))
    read = row_reader(array, "data")
    try:
        sample = read(rows)
    finally:
        read.close()
    return {"memmap": place, "sampled rows": f"{len(rows)}",
            "values": f"{array.dtype}{list(array.shape)}:" + content_hash(sample)}
