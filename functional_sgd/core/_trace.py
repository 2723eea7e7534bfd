"""The one tracer of a user's functions: the loss, as ``fit`` calls it
(the lesson's, or as a model calls it), and ``evaluate``.

Each is traced with ``jax.eval_shape`` (nothing runs or compiles) once per
signature: the function, the model that says how it is called, and the
structure, shapes, dtypes and weak types of its arguments, built from plain
attributes, so a call with a known signature costs a dictionary look-up.
What it returns is checked against its convention, and a failure inside it
surfaces here with the shapes of its arguments, not deep inside the loop.

The conventions:

* the lesson's loss: ``loss(params, *batch) -> real scalar``;
* a model's loss (``Model(rng=, state=, has_aux=)``):
  ``loss(params[, state], *batch[, key=key])`` returning the value, or
  ``(value[, new_state][, aux])``, the value a real scalar, ``new_state``
  of the state's structure, shapes and dtypes, ``aux`` a pytree of arrays;
* ``evaluate(params[, state], *eval_data)``: a dict of real arrays, or a
  bare scalar taken as ``{"loss": value}``.
"""

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..drivers import TRAIN
from ._flax_nnx import refuse_outside_variables
from ._model import PLAIN, Static, is_static, unwrap, wrap


def signature(x):
    """``(shape, dtype, weak_type)`` as JAX will see ``x``, without building an aval."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return tuple(x.shape), x.dtype, bool(getattr(x, "weak_type", False))  # keys: none
    if isinstance(x, np.ndarray):
        return x.shape, jax.dtypes.canonicalize_dtype(x.dtype), False
    spec = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))  # scalars
    # JAX types Python numbers weakly (they take the dtype of what they meet);
    # NumPy scalars and bools keep their own.
    weak = isinstance(x, (int, float, complex)) and not isinstance(x, (bool, np.generic))
    return spec.shape, spec.dtype, weak


def spec(signature):
    shape, dtype, weak_type = signature
    return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak_type)


def shapes(tree):
    return jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", tree)


def batch_of(data, batch_size):
    """Shapes and dtypes of a batch of ``batch_size`` rows of ``data``
    (built once per signature: a ``ShapeDtypeStruct`` is slow to build)."""
    return _batch_of(tuple(signature(a)[:2] for a in data), batch_size)


@functools.lru_cache(maxsize=256)
def _batch_of(signatures, batch_size):
    return tuple(jax.ShapeDtypeStruct((batch_size,) + tuple(shape[1:]), dtype)
                 for shape, dtype in signatures)


def _traced(trace, function, model, trees, arrays):
    """``trace(function, model, *trees, *arrays)`` on the shapes and dtypes
    of ``trees`` (pytrees) and ``arrays`` (tuples of arrays), once per
    signature when ``function`` hashes."""
    flat = [jax.tree.flatten(tree) for tree in trees]
    treedefs = tuple(treedef for _, treedef in flat)
    signed = (tuple(tuple(map(signature, leaves)) for leaves, _ in flat),
              tuple(tuple(map(signature, group)) for group in arrays))
    try:
        hash(function)
    except TypeError:
        return _trace(trace, function, model, treedefs, signed)
    return _cached_trace(trace, function, model, treedefs, signed)


@functools.lru_cache(maxsize=512)  # the three conventions' 256 each before
def _cached_trace(trace, function, model, treedefs, signed):
    return _trace(trace, function, model, treedefs, signed)


def _trace(trace, function, model, treedefs, signed):
    trees = [jax.tree.unflatten(treedef, [spec(s) for s in group])
             for treedef, group in zip(treedefs, signed[0])]
    return trace(function, model, *trees, *(tuple(map(spec, group)) for group in signed[1]))


# The loss.

def check_loss(loss, params, batch, *, model=PLAIN, state=None, rng=None):
    """Traces the loss as ``model`` calls it on ``params`` (and ``state``,
    ``rng``) and ``batch``, once per signature, and checks what it returns
    against the model's ``state`` and ``has_aux``; returns the shapes and
    dtypes of the value and of the aux (``None`` without ``has_aux``).

    A model's ``params`` and ``state`` come wrapped (``_model.wrap``), so
    their leaves are arrays and the signature is a plain tuple.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable as {_call(model)}; got {loss!r}.")
    return _traced(_loss_shapes, loss, model, (params, state),
                   (batch, () if rng is None else (rng,)))


def check_loss_per_row(loss, params, data, *, model=PLAIN, state=None, rng=None,
                       cause="mesh"):
    """Under a mesh, and on padded batches (``cause``: ``"drop_last=False"``,
    ``"a short batch"``), the loss is evaluated row by row, as a mean over
    rows (``drivers/_mesh.py``), so it is also traced on batches of one row.
    A key, a state or an aux of the whole batch mean nothing there, and are
    refused; frozen and non-array leaves are fine."""
    given = [name for name, on in (("Model(rng=)", model.rng), ("Model(state=)", model.state),
                                   ("Model(has_aux=True)", model.has_aux)) if on]
    where = "under a mesh the loss is" if cause == "mesh" else \
        "a short batch's loss (padding, -1 rows) is"
    cause = {"mesh": "Run(mesh=)", "a short batch": "a short batch"}.get(
        cause, "short batches (Shuffled(drop_last=False), or a padded Schedule)")
    if given:
        raise ValueError(
            f"{cause} cannot run with {' or '.join(given)}: {where} evaluated "
            "row by row (a mean over rows), where a batch's dropout key, batch statistics "
            f"(state) or aux have no meaning. Drop {cause}, or drop "
            + " and ".join(given) + ".")
    try:
        check_loss(loss, params, batch_of(data, 1), model=model, state=state, rng=rng)
    except ValueError as error:
        raise ValueError(f"with {cause}, loss is evaluated on batches of one row and must "
                         f"be a mean over rows; that failed: {error}") from error


def _call(model):
    """How ``model`` calls the loss, for messages."""
    args = "params, state, *batch" if model.state else "params, *batch"
    return f"loss({args}{', key=key' if model.rng else ''})"


def _returns(model):
    return {(False, False): "a real scalar", (True, False): "(value, new_state)",
            (False, True): "(value, aux)", (True, True): "(value, new_state, aux)"}[
        model.state, model.has_aux]


def _loss_shapes(loss, model, params, state, batch, key):
    if model.plain:
        try:
            out = jax.eval_shape(loss, params, *batch)
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(
                f"loss(params, *batch) failed for params of shape {shapes(params)} and a "
                f"batch of shape {shapes(batch)}; check that params fit the model "
                f"and data. The loss said: {error}") from error
        except Exception as error:
            refuse_outside_variables(error)
            raise
        _check_loss_value(out)
        return out, None
    key = key[0] if model.rng else None

    def call(params, state, key, *batch):
        args = (unwrap(params), unwrap(state), *batch) if model.state \
            else (unwrap(params), *batch)
        return wrap(loss(*args, key=key) if model.rng else loss(*args))

    try:
        out = jax.eval_shape(call, params, state, key, *batch)
    except (TypeError, ValueError, AttributeError) as error:
        hint = ""
        if model.rng and "key" in str(error):
            hint = (" With Model(rng=), fit calls the loss with the keyword key= (a new key every "
                    "step): give the loss that argument, e.g. def loss(params, x, y, *, key).")
        raise ValueError(
            f"{_call(model)} failed for params of shape {shapes(params)}, "
            + (f"state of shape {shapes(state)}, " if model.state else "")
            + f"and a batch of shape {shapes(batch)}; check that params fit "
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
        _check_loss_value(out)
    if not (hasattr(value, "shape") and value.shape == ()
            and jnp.issubdtype(value.dtype, jnp.floating)):
        raise ValueError(f"with {given}, the loss's value (first of what it returns) must "
                         f"be a real scalar; got {_described(value)}. Reduce it, e.g. with "
                         ".mean().")
    if model.state:
        _check_new_state(state, out[1])
    if model.has_aux and any(isinstance(a, Static) and not isinstance(a.value, (int, float))
                             for a in jax.tree.leaves(out[-1], is_leaf=is_static)):
        raise ValueError(f"with Model(has_aux=True), the loss's aux must be a pytree of arrays "
                         f"(fit stacks it over the steps); got {_described(out[-1])}.")
    return value, out[-1] if model.has_aux else None


def _check_loss_value(out):
    """A loss (without state or aux) must return a real scalar."""
    if isinstance(out, (tuple, list)):
        raise ValueError(
            f"loss must return a real scalar; it returned a {type(out).__name__} of "
            f"{len(out)}: {shapes(out)}. If it returns (value, aux), pass "
            "model=fsgd.Model(has_aux=True); if (value, new_state), pass the initial model "
            "state as model=fsgd.Model(state=...).")
    if not hasattr(out, "shape") or out.shape != () \
            or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"loss must return a real scalar; got {shapes(out)}. Reduce it, e.g. with "
            ".mean().")


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
    return jnp.dtype(a.dtype)


def _described(tree):
    """Shapes and dtypes of a traced output, for messages."""
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}" if hasattr(s, "shape")
                            else repr(s), tree, is_leaf=is_static))


# evaluate.

def check_evaluate(evaluate, params, state, eval_data, model):
    """Traces ``evaluate`` once per signature of its arguments and checks it
    returns a dict of real arrays; returns their shapes. A warm call looks
    the result up."""
    return _traced(_evaluate_shapes, evaluate, model, (params, state), (eval_data,))


def _evaluate_shapes(evaluate, model, params, state, eval_data):
    def call(params, state, eval_data):
        return call_evaluate(evaluate, model, params, state, eval_data)

    args = "params, state, *data" if model.state else "params, *data"
    try:
        out = jax.eval_shape(call, params, state, eval_data)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as error:
        raise ValueError(f"evaluate({args}) failed for Evaluation(data=) of shape "
                         f"{shapes(eval_data)}; it said: {error}") from error
    check_values(out)
    return out


def call_evaluate(evaluate, model, params, state, eval_data):
    """``evaluate`` called on (wrapped) params and state as its user wrote it;
    its result as a dict (:func:`as_dict`)."""
    if model.plain:
        return as_dict(evaluate(params, *eval_data))
    if model.state:
        return as_dict(evaluate(unwrap(params), unwrap(state), *eval_data))
    return as_dict(evaluate(unwrap(params), *eval_data))


def as_dict(out):
    """``evaluate``'s result as a dict: a bare array is ``{"loss": out}``."""
    if isinstance(out, Mapping):
        return out
    if hasattr(out, "shape") or isinstance(out, (int, float)):
        return {"loss": out}
    return out


def check_values(out):
    """``evaluate``'s result must be a dict of real arrays (scalars or not)."""
    if not isinstance(out, Mapping) or not out:
        raise ValueError(f"evaluate must return a non-empty dict of arrays, e.g. "
                         f"{{'accuracy': acc}}, or a scalar (named 'loss'); got {out!r}.")
    for name, value in out.items():
        if not isinstance(name, str):
            raise TypeError(f"evaluate's dict must have str keys; got {name!r}.")
        if name.startswith(TRAIN):
            raise ValueError(f"evaluate's keys may not start with {TRAIN!r}: those hold the "
                             f"training means of each period; got {name!r}. Rename it.")
        dtype = getattr(value, "dtype", None)
        if dtype is None or not (jnp.issubdtype(dtype, jnp.floating)
                                 or jnp.issubdtype(dtype, jnp.integer)):
            raise ValueError(f"evaluate must return a dict of real arrays; its {name!r} is "
                             f"{getattr(value, 'dtype', type(value).__name__)}"
                             f"{list(getattr(value, 'shape', ()))}.")
