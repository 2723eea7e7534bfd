"""Full-batch data stored the way XLA's CPU matmuls read it fastest.

A full-batch step reads ``x`` of shape ``(n, d)`` twice: ``x @ a`` and
``xᵀ r``. With ``x`` stored row-major and ``d`` small, XLA-CPU runs the
first as ``n`` tiny dot products; stored as ``(d, n)`` both become long,
vectorised sweeps, several times faster at ``d = 2`` and ``d = 100``
(``bench/investigations/scale_probe.py`` measures it).

The user's loss is not rewritten by hand: it is traced once to a jaxpr, and
that jaxpr is replayed with ``xᵀ`` (copied once per call) in place of ``x``,
each ``dot_general`` on it told to contract the other axis. This applies only
to a 2-D data array used solely as a matmul operand (with at least one
contracted axis); any other use leaves that array as it is. It costs one
copy of ``x`` per call (not per step). Passing
``x.T.T`` instead does not work: XLA then copies the transpose every step.

The same replay takes the sum over the rows of a short vector (the ``mean``
of an MSE) as a dot product with ones: XLA:CPU reduces a batch of such
vectors (``jax.vmap`` over learning rates) with a padded reduce-window,
slower than the dot that computes the same sum (256 rows of 100). Its
gradient stays the broadcast that ``sum``'s is, so parameters keep their
bits; the loss values may differ in their last bits (another summation order).
"""

import jax
import jax.numpy as jnp
from jax.extend.core import Literal
from jax.extend.core.primitives import dot_general_p, reduce_sum_p

MAX_SUM_BY_DOT = 1 << 14
"""Longest vector summed as a dot product: the loss's sum over the rows of a
small problem, where the reduction's own overhead is what costs."""

MAX_COLUMNS = 256
"""Wider data keeps its layout: at ``d = 1000`` row-major was as fast or
faster in 2 of 3 side-by-side runs, and the copy would cost memory for nothing."""

def column_major(loss, params, data, *, transpose=True, sums_as_dots=True):
    """``(loss, data)`` with eligible data arrays stored transposed and short
    float sums taken as dot products (see the module docstring); unchanged
    when neither applies. ``transpose`` and ``sums_as_dots`` switch each off.

    Returns a loss taking the stored arrays and the stored data; the values
    and gradients it gives are those of ``loss`` (a matmul's rounding may
    differ in its last bits, as any change of summation order does).

    >>> import jax.numpy as jnp
    >>> from functional_sgd import linear_mse
    >>> x, y = jnp.ones((4, 2)), jnp.zeros(4)
    >>> loss, (stored_x, _) = column_major(linear_mse, jnp.zeros(2), (x, y))
    >>> stored_x.shape, float(loss(jnp.ones(2), stored_x, y))
    ((2, 4), 4.0)
    """
    stored_loss, flip = layout_loss(loss, params, data, transpose=transpose,
                                    sums_as_dots=sums_as_dots)
    if stored_loss is loss:
        return loss, data
    # The barrier keeps XLA from folding the transpose back into the matmuls.
    return stored_loss, tuple(jax.lax.optimization_barrier(a.T) if i in flip else a
                              for i, a in enumerate(data))


def layout_loss(loss, params, data, *, transpose=True, sums_as_dots=True):
    """The loss half of :func:`column_major`: ``(stored_loss, flip)``, where
    ``flip`` lists the indices of the data arrays ``stored_loss`` takes
    transposed (``data`` may be shapes: ``jax.ShapeDtypeStruct``). ``loss``
    itself and ``()`` when neither change applies."""
    closed = jax.make_jaxpr(loss)(params, *data)
    n_params = len(jax.tree.leaves(params))
    data_vars = closed.jaxpr.invars[n_params:]
    flip = tuple(i for i, (var, a) in enumerate(zip(data_vars, data))
                 if transpose and a.ndim == 2 and 1 < a.shape[1] <= MAX_COLUMNS
                 and jnp.issubdtype(a.dtype, jnp.floating)
                 and _only_in_matmuls(closed.jaxpr, var))
    by_dot = sums_as_dots and any(map(_sum_by_dot_applies, closed.jaxpr.eqns))
    if not flip and not by_dot:
        return loss, ()
    flipped = {data_vars[i] for i in flip}
    treedef = jax.tree.structure(params)

    def stored_loss(params, *stored):
        if jax.tree.structure(params) != treedef:
            raise ValueError("column_major: params changed structure since tracing.")
        args = jax.tree.leaves(params) + list(stored)
        return _replay(closed.jaxpr, closed.consts, args, flipped, by_dot)[0]

    return stored_loss, flip


def _only_in_matmuls(jaxpr, var):
    if any(v is var for v in jaxpr.outvars):
        return False
    for eqn in jaxpr.eqns:
        sides = [i for i, v in enumerate(eqn.invars) if v is var]
        if not sides:
            continue
        if eqn.primitive is not dot_general_p:
            return False
        (contract, batch) = eqn.params["dimension_numbers"]
        side = sides[0]
        if len(sides) > 1 or not (contract[side] or batch[side]):
            return False  # x @ x.T or an outer product: its free axes would swap
    return True


def _replay(jaxpr, consts, args, flipped, sums_as_dots):
    """Evaluates ``jaxpr`` with the ``flipped`` variables bound to their transposes."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        if sums_as_dots and _sum_by_dot_applies(eqn):
            outs = [_sum_by_dot(values[0])]
        elif eqn.primitive is dot_general_p and any(v in flipped for v in eqn.invars
                                                    if not isinstance(v, Literal)):
            (contract, batch) = eqn.params["dimension_numbers"]
            swap = lambda axes, v: tuple(1 - a for a in axes) if v in flipped else axes
            lhs, rhs = eqn.invars
            numbers = ((swap(contract[0], lhs), swap(contract[1], rhs)),
                       (swap(batch[0], lhs), swap(batch[1], rhs)))
            outs = [dot_general_p.bind(*values, **{**eqn.params,
                                                  "dimension_numbers": numbers})]
        else:
            bind = eqn.primitive.get_bind_params(eqn.params)  # a pair in older JAX
            subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
            outs = eqn.primitive.bind(*subfuns, *values, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _sum_by_dot_applies(eqn):
    """A ``sum`` of a whole float vector of at most ``MAX_SUM_BY_DOT`` elements."""
    if eqn.primitive is not reduce_sum_p:
        return False
    aval = eqn.invars[0].aval
    return (aval.ndim == 1 and tuple(eqn.params["axes"]) == (0,)
            and 1 < aval.shape[0] <= MAX_SUM_BY_DOT and jnp.issubdtype(aval.dtype, jnp.floating))


@jax.custom_vjp
def _sum_by_dot(v):
    """``v.sum()`` as ``v · 1``; its gradient is the broadcast ``sum``'s is."""
    # HIGHEST: a GPU or TPU would otherwise round the terms (to TF32 or bf16).
    return jnp.dot(v, jnp.ones_like(v), precision=jax.lax.Precision.HIGHEST)


def _sum_by_dot_forward(v):
    return _sum_by_dot(v), v


def _sum_by_dot_backward(v, cotangent):
    return (jnp.broadcast_to(cotangent, v.shape).astype(v.dtype),)


_sum_by_dot.defvjp(_sum_by_dot_forward, _sum_by_dot_backward)
