"""Full-batch descent reading the data once a step, in cache-sized row blocks.

A plain full-batch step of ``L(p) = mean_i ℓ(p; row i)`` reads ``x`` twice:
once for the predictions, once more for the gradient (``xᵀ r`` for a linear
model), and when ``x`` is larger than the cache both reads come from memory.
Cut into blocks ``B_1 .. B_k`` of rows, the same loss and gradient are

    L(p) = Σ_b (|B_b| / n) L_b(p),     ∇L(p) = Σ_b (|B_b| / n) ∇L_b(p),

where ``L_b`` is the loss on block ``b`` alone. :func:`one_pass` takes each
block's value and gradient while the block is in cache (a loop over the
blocks) and sums them: one read of ``x`` from memory a step.

That identity holds only for a loss that is a mean over its rows, so the
plan uses it on its own only for the library's ``linear_mse``; any other loss
must ask for it (``SpeedPlan(one_pass=True)``), as ``mesh`` asks the same of it.
Results equal the plain step's to float rounding (another summation order).
"""

import math

import jax
import jax.numpy as jnp

ROW_BLOCK_BYTES = 4 << 20
"""Bytes of the data's rows in one block. Measured at 1e4 x 1000 float32 on a
2-core EPYC (2 MiB L2 a core, 32 MiB L3; ``python -m bench.one_pass --blocks``):
4 MiB blocks took 0.80x and 0.91x the plain step's time in two runs, 1 MiB
1.22x and 2 MiB 1.28x (each block's loop iteration has a fixed cost), 8 MiB
1.00x. At 1e5 x 100 the plain step on column-major data stays faster."""


def block_rows(data, block_bytes):
    """Rows per block: ``block_bytes`` of the data's rows, at least one."""
    row_bytes = sum(a.dtype.itemsize * math.prod(a.shape[1:]) for a in data)
    return max(1, block_bytes // max(1, row_bytes))


def one_pass(loss, data, block_bytes=ROW_BLOCK_BYTES):
    """``loss`` (a mean over rows) as a loss whose value and gradient are
    taken in one sweep over blocks of ``block_bytes`` of ``data``'s rows.

    Returns ``blocked(params, *data)``: the value of ``loss(params, *data)``
    and, under ``jax.grad``, its gradient (for data of the shapes given).

    >>> import jax, jax.numpy as jnp
    >>> from functional_sgd import linear_mse
    >>> x = jnp.arange(20.0).reshape(10, 2); y = jnp.ones(10); a = jnp.array([0.5, -0.25])
    >>> blocked = one_pass(linear_mse, (x, y), block_bytes=4 * 12)  # 4 rows a block
    >>> value, grad = jax.value_and_grad(blocked)(a, x, y)
    >>> bool(jnp.allclose(value, linear_mse(a, x, y))), bool(jnp.allclose(
    ...     grad, jax.grad(linear_mse)(a, x, y)))
    (True, True)
    """
    rows, n_data = block_rows(data, block_bytes), len(data)

    def value_and_grad(params, data):
        n = data[0].shape[0]
        full, tail = divmod(n, rows)

        def block(start, size):
            batch = tuple(jax.lax.dynamic_slice_in_dim(a, start, size) for a in data)
            value, grad = jax.value_and_grad(loss)(params, *batch)
            weight = size / n
            return value * weight, jax.tree.map(lambda g: g * jnp.asarray(weight, g.dtype), grad)

        def add(total, term):
            return jax.tree.map(jnp.add, total, term)

        # The loop's first block starts it, so the sums keep the loss's own dtypes.
        total = block(0, rows if full else tail)
        if full > 1:
            total = jax.lax.fori_loop(1, full, lambda i, t: add(t, block(i * rows, rows)), total)
        if full and tail:
            total = add(total, block(full * rows, tail))
        return total

    @jax.custom_vjp
    def blocked(params, *data):
        return value_and_grad(params, data)[0]

    def forward(params, *data):
        return value_and_grad(params, data)

    def backward(grad, cotangent):
        scaled = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad)
        return (scaled,) + (None,) * n_data

    blocked.defvjp(forward, backward)
    return blocked
