"""Checks of a user's model (``fit(model=Model(rng=, state=, has_aux=, trainable=))``),
in plain Python before the loop is traced.

The loss is traced once per signature, as the model calls it, and what it
returns is held against what ``state`` and ``has_aux`` promise: each
mismatch gets its own message naming the argument.
"""

import functools

import jax

from . import _checks
from ._flax_nnx import refuse_outside_variables
from ._model import Static, is_static, unwrap, wrap


def check_loss_per_row(loss, params, state, data, model, rng, cause="mesh"):
    """Under a mesh, and on padded batches (``cause``: ``"drop_last=False"``),
    the loss is evaluated row by row, as a mean over rows
    (``drivers/_mesh.py``): a key, a state or an aux of the whole batch mean
    nothing there, and are refused; frozen and non-array leaves are fine."""
    given = [name for name, on in (("Model(rng=)", model.rng), ("Model(state=)", model.state),
                                   ("Model(has_aux=True)", model.has_aux)) if on]
    where = "under a mesh the loss is" if cause == "mesh" else \
        "a short batch's loss (padding, -1 rows) is"
    cause = "Run(mesh=)" if cause == "mesh" else \
        "short batches (Shuffled(drop_last=False), or a padded Schedule)"
    if given:
        raise ValueError(
            f"{cause} cannot run with {' or '.join(given)}: {where} evaluated "
            "row by row (a mean over rows), where a batch's dropout key, batch statistics "
            f"(state) or aux have no meaning. Drop {cause}, or drop "
            + " and ".join(given) + ".")
    _checks.check_loss_per_row(
        lambda batch: check_loss(loss, params, state, batch, model, rng), data,
        f"with {cause}")


def check_loss(loss, params, state, batch, model, rng):
    """``_checks.check_loss`` for a user's model: traces the loss as ``model``
    calls it, once per signature, and checks what it returns against
    ``state`` and ``has_aux``; returns the shapes and dtypes of the value
    and of the aux (``None`` without ``has_aux``).

    ``params`` and ``state`` come wrapped (:func:`wrap`), so their leaves
    are arrays and the signature is a plain tuple.
    """
    if model.plain:
        return _checks.check_loss(loss, params, batch), None
    if not callable(loss):
        raise TypeError(f"loss must be callable as {_call(model)}; got {loss!r}.")
    (leaves, treedef), (state_leaves, state_def) = map(jax.tree.flatten, (params, state))
    signature = tuple(tuple(map(_checks.signature, group))
                      for group in (leaves, state_leaves, batch, () if rng is None else (rng,)))
    try:
        hash(loss)
    except TypeError:
        return _trace_loss(loss, model, treedef, state_def, signature)
    return _cached_trace_loss(loss, model, treedef, state_def, signature)


def _call(model):
    """How ``model`` calls the loss, for messages."""
    args = "params, state, *batch" if model.state else "params, *batch"
    return f"loss({args}{', key=key' if model.rng else ''})"


def _returns(model):
    return {(False, False): "a real scalar", (True, False): "(value, new_state)",
            (False, True): "(value, aux)", (True, True): "(value, new_state, aux)"}[
        model.state, model.has_aux]


@functools.lru_cache(maxsize=256)
def _cached_trace_loss(loss, model, treedef, state_def, signature):
    return _trace_loss(loss, model, treedef, state_def, signature)


def _trace_loss(loss, model, treedef, state_def, signature):
    params_spec, state_spec = (jax.tree.unflatten(d, [_checks.spec(s) for s in group])
                               for d, group in ((treedef, signature[0]),
                                                (state_def, signature[1])))
    batch_spec = tuple(map(_checks.spec, signature[2]))
    key_spec = _checks.spec(signature[3][0]) if model.rng else None

    def call(params, state, key, *batch):
        args = (unwrap(params), unwrap(state), *batch) if model.state \
            else (unwrap(params), *batch)
        return wrap(loss(*args, key=key) if model.rng else loss(*args))

    try:
        out = jax.eval_shape(call, params_spec, state_spec, key_spec, *batch_spec)
    except (TypeError, ValueError, AttributeError) as error:
        hint = ""
        if model.rng and "key" in str(error):
            hint = (" With Model(rng=), fit calls the loss with the keyword key= (a new key every "
                    "step): give the loss that argument, e.g. def loss(params, x, y, *, key).")
        raise ValueError(
            f"{_call(model)} failed for params of shape {_checks.shapes(params_spec)}, "
            + (f"state of shape {_checks.shapes(state_spec)}, " if model.state else "")
            + f"and a batch of shape {_checks.shapes(batch_spec)}; check that params fit "
            f"the model and data. The loss said: {error}{hint}") from error
    except Exception as error:
        refuse_outside_variables(error)
        raise
    given = " and ".join(name for name, on in (("Model(state=)", model.state),
                                               ("Model(has_aux=True)", model.has_aux)) if on)
    parts = 1 + model.state + model.has_aux
    if parts > 1:
        if not isinstance(out, (tuple, list)) or len(out) != parts:
            raise ValueError(
                f"with {given}, loss must return {_returns(model)}; it returned "
                f"{_described(out)}." + (" Drop Model(has_aux=True) if it returns no aux."
                                         if model.has_aux and not isinstance(out, tuple) else ""))
        value = out[0]
    else:
        value = out
        _checks.check_loss_value(out)
    if not (hasattr(value, "shape") and value.shape == ()
            and jax.numpy.issubdtype(value.dtype, jax.numpy.floating)):
        raise ValueError(f"with {given}, the loss's value (first of what it returns) must "
                         f"be a real scalar; got {_described(value)}. Reduce it, e.g. with "
                         ".mean().")
    if model.state:
        _check_new_state(state_spec, out[1])
    if model.has_aux and any(isinstance(a, Static) and not isinstance(a.value, (int, float))
                             for a in jax.tree.leaves(out[-1], is_leaf=is_static)):
        raise ValueError(f"with Model(has_aux=True), the loss's aux must be a pytree of arrays "
                         f"(fit stacks it over the steps); got {_described(out[-1])}.")
    return value, out[-1] if model.has_aux else None


def _check_new_state(state_spec, new_state):
    """The new state must be the state's double: same structure, shapes, dtypes."""
    old = [(tuple(a.shape), _dtype(a)) for a in jax.tree.leaves(state_spec)]
    new = [(tuple(a.shape), _dtype(a)) if hasattr(a, "shape") else a
           for a in jax.tree.leaves(new_state)]
    if jax.tree.structure(state_spec) != jax.tree.structure(new_state) or old != new:
        raise ValueError(
            "with state, loss must return (value, new_state) where new_state has the "
            f"structure, shapes and dtypes of state; state is {_described(state_spec)} "
            f"but the loss returned {_described(new_state)}.")


def _dtype(a):
    """``a``'s dtype, comparable: a PRNG key's (``key<fry>``, an nnx stream's)
    is no NumPy dtype, and is compared as it is."""
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.extended):
        return a.dtype
    return jax.numpy.dtype(a.dtype)


def _described(tree):
    """Shapes and dtypes of a traced output, for messages."""
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}" if hasattr(s, "shape")
                            else repr(s), tree, is_leaf=is_static))
