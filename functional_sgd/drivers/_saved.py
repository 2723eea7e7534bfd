"""Keeping a model: :func:`save` a result's params (and state), :func:`load` them back.

The file is the checkpoint's own format (``_checkpoint.py``): one ``.npz``
written atomically, a JSON header and every array as its raw bytes (so
bfloat16 and PRNG keys round-trip with the same bits). Leaves that are not
arrays are of two kinds: Python numbers (a float in an equinox module) are
stored in the header, exactly; everything else (functions, strings) cannot
be stored and comes back from ``like``, after checking that ``like`` holds
the same one (by module and name).
"""

import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from .._types import FitResult
from ._checkpoint import (
    as_raw_bytes,
    check_path,
    from_raw_bytes,
    keys_as_bits,
    read_archive,
    without_addresses,
    write_atomically,
)
from ._chunks import is_key

FORMAT = "functional-sgd saved params"
VERSION = 1


class Saved(NamedTuple):
    """What :func:`load` returns: the params and the model state (``None`` if
    none was saved)."""

    params: Any
    state: Any = None


def save(path: str | os.PathLike, params: Any, *, state: Any = None) -> None:
    """Saves ``params`` (and a model ``state``) to ``path``, atomically.

    Args:
      path: the file to write (``.npz`` by custom); an old file there is
        replaced whole, or left untouched if the write fails.
      params: any pytree: arrays of any dtype (bfloat16, ints, bools, PRNG
        keys), an equinox module, a flax nnx ``State``; or a
        :class:`~functional_sgd.FitResult`, whose ``params`` and ``state``
        are saved.
      state: the model state (``result.state`` of ``fit(model=Model(state=...))``), or
        ``None``.

    >>> import os, tempfile, jax, jax.numpy as jnp
    >>> import functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> result = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100)
    >>> path = os.path.join(tempfile.mkdtemp(), "line.npz")
    >>> fsgd.save(path, result)
    >>> params = fsgd.load(path, like=jnp.zeros(2)).params
    >>> bool((params == result.params).all())
    True
    """
    if isinstance(params, FitResult):
        if state is not None:
            raise ValueError("save got a FitResult and state=: a result's own state is "
                             "saved with its params; pass one or the other.")
        params, state = params.params, params.state
    path = check_path(path, "path")
    arrays: dict[str, Any] = {}
    scalars: dict[str, list] = {}
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "scalars": scalars}
    for part, tree in (("params", params), ("state", state)):
        if part == "state" and tree is None:
            header["state"] = None
            continue
        leaves, described = _described(tree)
        header[part] = described
        for i, leaf in enumerate(leaves):
            name = f"{part}_{i}"
            if _is_array(leaf):
                arrays[name] = leaf
            elif isinstance(leaf, (bool, int, float, complex)):
                scalars[name] = _number(leaf)
    arrays, header["keys"] = keys_as_bits(arrays)
    header["dtypes"] = {name: str(a.dtype) for name, a in arrays.items()}
    write_atomically(path, {"header": np.array(json.dumps(header)), **as_raw_bytes(arrays)})


def load(path: str | os.PathLike, *, like: Any, like_state: Any = None) -> Saved:
    """Loads what :func:`save` wrote to ``path``, in the structure of ``like``.

    Array leaves come back as JAX arrays with the bits saved; leaves that
    cannot be stored (functions) come from ``like``. The file must match
    ``like`` exactly (structure, every leaf's dtype and shape, the same
    functions), else it is refused, naming the first leaves that differ.

    Args:
      path: a file written by :func:`save`.
      like: params of the structure saved: the model as built before
        training (an equinox module, an nnx ``State``), or
        ``jax.eval_shape`` of it.
      like_state: the same for the model state, when one was saved.

    Returns:
      ``Saved(params, state)``; ``state`` is ``None`` when none was saved.

    Raises:
      ValueError: no such file, not a file of :func:`save`, a corrupt one,
        or one that does not match ``like``/``like_state``.

    >>> import os, tempfile, jax, equinox as eqx
    >>> import functional_sgd as fsgd
    >>> model = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    >>> path = os.path.join(tempfile.mkdtemp(), "linear.npz")
    >>> fsgd.save(path, model)
    >>> loaded = fsgd.load(path, like=eqx.nn.Linear(2, 1, key=jax.random.key(1))).params
    >>> bool((loaded.weight == model.weight).all())
    True
    """
    path = check_path(path, "path", existing=True)
    try:
        header, contents = read_archive(path)
    except Exception as error:  # zipfile, zlib and json each fail their own way
        raise ValueError(f"{path} is corrupt or truncated, or no .npz, and was not loaded "
                         f"({type(error).__name__}: {error}).") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT \
            or header.get("version") != VERSION:
        raise ValueError(f"{path} was not saved by functional_sgd.save (version "
                         f"{VERSION}) and was not loaded; pass a file it wrote.")
    if header["state"] is None and like_state is not None:
        raise ValueError(f"{path} holds params only, but like_state was given; drop it.")
    if header["state"] is not None and like_state is None:
        raise ValueError(f"{path} holds a model state too: pass like_state= (the state "
                         "as the model starts it) to load it.")
    params = _rebuilt(path, "params", like, header, contents)
    state = None if like_state is None else _rebuilt(path, "state", like_state, header,
                                                     contents)
    return Saved(params, state)


def _is_array(leaf):
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _described(tree):
    """``(leaves, description)``: the tree's structure and each leaf's kind
    (``dtype[shape]``; a Python number's type; another object's name)."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [leaf for _, leaf in with_paths], {
        "tree": without_addresses(str(treedef)),
        "paths": [jax.tree_util.keystr(path) for path, _ in with_paths],
        "leaves": [_leaf_kind(leaf) for _, leaf in with_paths]}


def _leaf_kind(leaf):
    if _is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct):
        return f"{leaf.dtype}{list(np.shape(leaf))}"
    if isinstance(leaf, (bool, int, float, complex)):
        return type(leaf).__name__
    name = getattr(leaf, "__qualname__", None)
    if callable(leaf) and isinstance(name, str):
        return f"{getattr(leaf, '__module__', '?')}.{name}"
    return f"{type(leaf).__name__} {without_addresses(repr(leaf))}"


def _number(value):
    """A Python number as exact JSON (floats by their hex digits)."""
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, complex):
        return ["complex", value.real.hex(), value.imag.hex()]
    return [type(value).__name__, int(value)]


def _from_number(entry):
    kind, *values = entry
    if kind == "float":
        return float.fromhex(values[0])
    if kind == "complex":
        return complex(float.fromhex(values[0]), float.fromhex(values[1]))
    return bool(values[0]) if kind == "bool" else int(values[0])


def _rebuilt(path, part, like, header, contents):
    """The saved ``part`` ("params" or "state") in ``like``'s structure,
    after checking that they match."""
    leaves, expected = _described(like)
    saved = header[part]
    if saved["tree"] != expected["tree"] or len(saved["leaves"]) != len(leaves):
        raise ValueError(
            f"{path}: its {part} do not have the structure of like"
            f"{'_state' if part == 'state' else ''}: the file holds "
            f"{len(saved['leaves'])} leaves at {_shown(saved['paths'])}, like has "
            f"{len(leaves)} at {_shown(expected['paths'])} (file: {_shown(saved['tree'])}; "
            f"like: {_shown(expected['tree'])}). Pass like= the model as it was built "
            "before training.")
    differ = [f"{where}: the file holds {held}, like has {given}" for where, held, given in
              zip(expected["paths"], saved["leaves"], expected["leaves"]) if held != given]
    if differ:
        raise ValueError(f"{path}: its {part} do not match like: " + "; ".join(differ[:3])
                         + ("; ..." if len(differ) > 3 else "")
                         + ". Pass like= params of the dtypes and shapes saved.")
    out = []
    for i, leaf in enumerate(leaves):
        name = f"{part}_{i}"
        if name in header["scalars"]:
            out.append(_from_number(header["scalars"][name]))
        elif name in header["dtypes"]:
            try:
                array = from_raw_bytes(contents[name], header["dtypes"][name],
                                       np.shape(leaf), header["keys"].get(name))
            except (ValueError, KeyError) as error:
                raise ValueError(f"{path} is corrupt ({name}: {error}) and was not "
                                 "loaded.") from None
            out.append(array if is_key(array) else jax.device_put(array))
        else:
            out.append(leaf)  # a function or other object: like's own
    return jax.tree.unflatten(jax.tree.structure(like), out)


def _shown(value, most=200):
    text = str(value)
    return text if len(text) <= most else text[:most] + "..."
