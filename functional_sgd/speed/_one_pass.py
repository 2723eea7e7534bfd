"""Full-batch descent reading the data once a step, in cache-sized row blocks.

A plain full-batch step of ``L(p) = mean_i ℓ(p; row i)`` reads ``x`` twice:
once for the predictions, once more for the gradient (``xᵀ r`` for a linear
model), and when ``x`` is larger than the cache both reads come from memory.
Cut into blocks ``B_1 .. B_k`` of rows, the same loss and gradient are

    L(p) = Σ_b (|B_b| / n) L_b(p),     ∇L(p) = Σ_b (|B_b| / n) ∇L_b(p),

where ``L_b`` is the loss on block ``b`` alone. :func:`one_pass` takes each
block's value and gradient while the block is in cache (a loop over the
blocks) and sums them: one read of ``x`` from memory a step.

How the blocks are stored decides whether that pays on XLA:CPU:

* Each block is its own array, copied out of the data once a call. A block
  sliced out of one array inside the loop (``dynamic_slice``) is copied
  every step before XLA's matmuls read it: one more write and read of ``x``.
  The loop picks block ``i``'s work with ``lax.switch``, whose branches read
  their block in place.
* A block is stored as :func:`~._layout.column_major` would store the whole
  array (``(d, rows)`` for ``d <= 256`` used only in matmuls): XLA:CPU's
  row-major ``(rows, 100) @ a`` runs several times slower.
* The blocks are taken one after another inside a loop. Unrolled, XLA
  schedules every block's prediction before any block's gradient: two reads.

That identity holds only for a loss that is a mean over its rows, so the
plan uses it on its own only for the library's such losses (``linear_mse``,
the lesson classifier's two); any other loss must ask for it
(``SpeedPlan(one_pass=True)``), as ``mesh`` asks the same of it.

What it gains is bounded by XLA:CPU (measured on a 2-core EPYC, 1 MiB of L2
a core, 32 MiB of L3; ``bench/investigations/one_pass.py``): a
matrix-vector product runs on both cores only from about 4 MiB, and a loop
body's independent products run one after another, so a block small enough
for one core's L2 is read by one core (about half the machine's read
bandwidth), and a block read by both is read again from L3.
Results equal the plain step's to float rounding (another summation order).
"""

import itertools
import math

import jax
import jax.numpy as jnp

from ._layout import layout_loss

ROW_BLOCK_BYTES = 4 << 20
"""Bytes of the data's rows in one block. On a 2-core EPYC (2 MiB L2 a core,
32 MiB L3), ``fit`` against the plain step at 1e4 x 1000 float32 gained a
little more with 4 MiB blocks than with 2 MiB, and at 1e5 x 100 the two were
level within the noise (``bench/investigations/one_pass.py --blocks``).
Each block is a branch of the compiled step, and each branch costs compile
time, so the larger of the two."""

MAX_BLOCKS = 16
"""Most blocks a step is cut into: larger data gets larger blocks rather
than a longer compile (a first call at 1e4 x 1000 compiled in 0.6 s plain,
2.9 s in 10 blocks, 7.6 s in 20, on the busy machine)."""


def block_bounds(data, block_bytes):
    """Row bounds ``[0, b_1, ..., n]`` of near-equal blocks of about
    ``block_bytes`` of ``data``'s rows each (at most :data:`MAX_BLOCKS`)."""
    n = data[0].shape[0]
    total = sum(a.dtype.itemsize * math.prod(a.shape) for a in data)
    k = max(1, min(n, MAX_BLOCKS, -(-total // block_bytes)))
    return [i * n // k for i in range(k + 1)]


def one_pass(loss, params, data, block_bytes=ROW_BLOCK_BYTES, *, transpose=True,
             sums_as_dots=True):
    """``(blocked_loss, stored)``: ``loss`` (a mean over rows) as a loss whose
    value and gradient are taken in one sweep over blocks of about
    ``block_bytes`` of ``data``'s rows, and the data stored as those blocks.

    ``blocked_loss(params, *stored)`` gives the value of ``loss(params, *data)``
    and, under ``jax.grad``, its gradient. Each block is stored as
    :func:`~._layout.column_major` stores data (``transpose`` and
    ``sums_as_dots`` switch its two changes off); storing costs one copy of
    ``data`` a call.

    >>> import jax, jax.numpy as jnp
    >>> from functional_sgd import linear_mse
    >>> x = jnp.arange(20.0).reshape(10, 2); y = jnp.ones(10); a = jnp.array([0.5, -0.25])
    >>> blocked, stored = one_pass(linear_mse, a, (x, y), block_bytes=30)  # 120 bytes: 4 blocks
    >>> len(stored), stored[0].shape  # x's first block, column-major
    (8, (2, 2))
    >>> value, grad = jax.value_and_grad(blocked)(a, *stored)
    >>> bool(jnp.allclose(value, linear_mse(a, x, y))), bool(jnp.allclose(
    ...     grad, jax.grad(linear_mse)(a, x, y)))
    (True, True)
    """
    n = data[0].shape[0]
    if any(a.ndim == 0 or a.shape[0] != n for a in data):
        raise ValueError("one_pass: every data array needs the same number of rows "
                         f"(leading axis); got shapes {[a.shape for a in data]}.")
    bounds = block_bounds(data, block_bytes)
    sizes = [hi - lo for lo, hi in itertools.pairwise(bounds)]
    per_size = {}  # at most two block sizes: a loss traced for each
    for size in sizes:
        if size not in per_size:
            shapes = tuple(jax.ShapeDtypeStruct((size,) + a.shape[1:], a.dtype) for a in data)
            per_size[size] = layout_loss(loss, params, shapes, transpose=transpose,
                                         sums_as_dots=sums_as_dots)
    # The barrier keeps XLA from folding the blocks back into slices in the loop.
    stored = jax.lax.optimization_barrier(tuple(
        a[lo:hi].T if j in per_size[hi - lo][1] else a[lo:hi]
        for lo, hi in itertools.pairwise(bounds) for j, a in enumerate(data)))
    n_data = len(data)

    def block_terms(i):
        block_loss = per_size[sizes[i]][0]
        weight = sizes[i] / n

        def terms(params, stored):
            value, grad = jax.value_and_grad(block_loss)(
                params, *stored[i * n_data:(i + 1) * n_data])
            return value * weight, jax.tree.map(lambda g: g * jnp.asarray(weight, g.dtype), grad)
        return terms

    branches = [block_terms(i) for i in range(len(sizes))]

    def value_and_grad(params, stored):
        if len(branches) == 1:
            return branches[0](params, stored)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(branches[0], params, stored))
        return jax.lax.fori_loop(0, len(branches), lambda i, total: jax.tree.map(
            jnp.add, total, jax.lax.switch(i, branches, params, stored)), zeros)

    @jax.custom_vjp
    def blocked(params, *stored):
        return value_and_grad(params, stored)[0]

    def forward(params, *stored):
        return value_and_grad(params, stored)

    def backward(grad, cotangent):
        scaled = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad)
        return (scaled,) + (None,) * len(stored)

    blocked.defvjp(forward, backward)
    return blocked, stored
