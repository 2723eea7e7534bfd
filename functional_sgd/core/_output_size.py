"""The size of what a call hands back, estimated from shapes alone before
anything compiles, against this machine's memory.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np


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
    needed, memory = sum(size for _, size, _ in sizes), memory_bytes()
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


def memory_bytes():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63
