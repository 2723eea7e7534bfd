"""Full-batch MSE on a linear model from sufficient statistics.

For ``L(a) = |X a - y|² / m`` (``m = y.size``) every full-batch step needs
only a few moments of the data. Taken about a centre ``c``, with
``δ = a - c``, ``r = X c - y``, ``h = Xᵀ r`` and ``G = Xᵀ X``, the loss is
the exact quadratic

    L(a) = (rᵀr + 2 hᵀδ + δᵀ G δ) / m,    ∇L(a) = 2 (h + G δ) / m,

so one pass over ``X`` (plus one for the centre) replaces two passes per
step, and each step costs ``O(d²)``.

Exactness. Expanding about ``c = 0`` (``aᵀGa - 2aᵀXᵀy + yᵀy``) cancels
catastrophically once the loss is small next to ``yᵀy``: in float32 at
``n = 10⁶`` that is off by ~1e-3. Here ``c`` is the least-squares solution
(a ridge-guarded Cholesky solve), so every term is small or non-negative and
nothing cancels. The moments are accumulated block by block in the widest
float JAX has on (float64 under ``jax_enable_x64``, else float32 with Kahan
compensation between blocks), and the loss is reported in the data's dtype.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

BLOCK_ROWS = 4096
"""Rows per accumulated block: large enough for a fast matmul, small enough
that float32 rounding inside one block stays near its epsilon."""


class Moments(NamedTuple):
    """Sufficient statistics of ``(X, y)`` about ``centre``, in ``acc`` precision."""

    centre: Any    # c, shaped like the params
    gram: Any      # G = XᵀX, (d, d), symmetric
    cross: Any     # h = Xᵀ(Xc - y), shaped like the params
    residual: Any  # rᵀr = |Xc - y|²
    size: Any      # m = y.size, in acc precision


def why_not(exact_mse, params, data, full_batch, mesh=None):
    """Why the moments cannot stand in for the data, or ``None`` when they can.

    They need one device (no ``mesh``: moments of one shard are not the
    data's), full-batch descent on the library's own ``linear_mse``
    (``exact_mse``: the caller checks it by identity), data ``(x, y)`` with
    ``x`` of shape ``(n, d)``, one params array of shape ``(d,)`` or
    ``(d, k)`` with ``y`` of shape ``(n,)`` or ``(n, k)``, all of one
    floating dtype.
    """
    if mesh is not None:
        return "it runs on one device, and Run(mesh=) shards the data"
    if not exact_mse:
        return "loss is not functional_sgd.linear_mse"
    if not full_batch:
        return "it is full-batch only (no batch_size, no Schedule)"
    if len(data) != 2 or not hasattr(params, "shape"):
        return "it needs data=(x, y) and params as one array"
    x, y = data
    # Canonical dtypes from the attributes: jnp.result_type is slow a call.
    dtypes = {jax.dtypes.canonicalize_dtype(a.dtype) for a in (x, y, params)}
    if len(dtypes) != 1 or not jnp.issubdtype(dtypes.pop(), jnp.floating):
        return "x, y and params must share one floating dtype"
    if x.ndim != 2 or params.shape[:1] != x.shape[1:] or params.shape[1:] != y.shape[1:] \
            or params.ndim > 2:
        return (f"it needs x (n, d), params (d,) or (d, k) and y (n,) or (n, k); got "
                f"x {tuple(x.shape)}, params {tuple(params.shape)}, y {tuple(y.shape)}")
    return None


def moments(x, y):
    """One pass for ``XᵀX`` and ``Xᵀy``, a solve for the centre, one pass about it."""
    acc = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 when x64 is off
    gram, xty = _blockwise_sum(lambda xb, yb: (xb.T @ xb, xb.T @ yb), x, y, acc)
    gram = (gram + gram.T) / 2  # exactly symmetric, so autodiff's (G + Gᵀ)δ/2 is Gδ
    centre = _least_squares(gram, xty)

    def about_centre(xb, yb):
        r = xb @ centre - yb
        return xb.T @ r, jnp.sum(r * r)

    cross, residual = _blockwise_sum(about_centre, x, y, acc)
    return Moments(centre, gram, cross, residual, jnp.asarray(y.size, acc))


def quadratic_mse(params, stats):
    """``linear_mse`` from :class:`Moments`: the exact quadratic, computed in
    their precision and returned in the params' (the data's) dtype.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 1.0], [0.5, 1.0], [-1.0, 1.0]]); y = jnp.array([5.0, 3.0, 1.0])
    >>> a = jnp.array([0.5, 0.75])
    >>> bool(jnp.allclose(quadratic_mse(a, moments(x, y)), jnp.mean((x @ a - y) ** 2)))
    True
    """
    delta = params.astype(stats.gram.dtype) - stats.centre
    value = (stats.residual + 2 * jnp.sum(stats.cross * delta)
             + jnp.sum(delta * jnp.tensordot(stats.gram, delta, 1))) / stats.size
    return value.astype(params.dtype)


def _least_squares(gram, xty):
    """Solves ``G c = Xᵀy`` by Cholesky, with a ridge of a few ulps of ``G``'s
    diagonal so a singular ``G`` still factors; any centre keeps the
    quadratic exact, a good one keeps it free of cancellation."""
    eps = jnp.finfo(gram.dtype).eps
    ridge = eps * gram.shape[0] * jnp.max(jnp.diagonal(gram))
    factor = jax.scipy.linalg.cho_factor(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype))
    centre = jax.scipy.linalg.cho_solve(factor, xty)
    return jnp.where(jnp.all(jnp.isfinite(centre)), centre, jnp.zeros_like(centre))


def _blockwise_sum(f, x, y, acc):
    """``sum over blocks of f(x_block, y_block)``, blocks of ``BLOCK_ROWS`` rows.

    Blocks are sliced inside a loop (no copy of ``x``) and cast to ``acc``;
    their sum carries a Kahan compensation term, so rounding grows with the
    block count only in the compensation's own, second-order error.
    """
    n = x.shape[0]
    rows = min(BLOCK_ROWS, n)
    full, tail = divmod(n, rows)

    def block(start, size):
        xb = jax.lax.dynamic_slice_in_dim(x, start, size).astype(acc)
        yb = jax.lax.dynamic_slice_in_dim(y, start, size).astype(acc)
        return f(xb, yb)

    def add(carry, term):  # Kahan: total + term, with the lost low bits kept in comp
        total, comp = carry
        term = jax.tree.map(jnp.subtract, term, comp)
        new = jax.tree.map(jnp.add, total, term)
        comp = jax.tree.map(lambda nw, t, tm: (nw - t) - tm, new, total, term)
        return new, comp

    first = block(0, rows)
    zeros = jax.tree.map(jnp.zeros_like, first)
    carry = jax.lax.fori_loop(1, full, lambda i, c: add(c, block(i * rows, rows)),
                              (first, zeros))
    if tail:
        carry = add(carry, block(full * rows, tail))
    return carry[0]
