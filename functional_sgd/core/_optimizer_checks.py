"""Checks of how params are updated: the learning rate (a number or a
schedule ``step -> rate``) or an optax optimizer, and the optimizer state
a run continues from; in plain Python before the loop is traced.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._arguments import is_concrete, is_inexact_dtype, is_real_dtype
from ._trace import signature, spec


def check_lr(lr, optimizer, opt_state=None, params=()):
    if optimizer is None and opt_state is not None:
        raise ValueError("Run(opt_state=) is given but optimizer is None: plain SGD keeps "
                         "no state. Pass the optimizer that made opt_state, or drop "
                         "Run(opt_state=).")
    if optimizer is not None:
        if lr is not None:
            raise ValueError(
                "pass either lr or optimizer, not both: an optax optimizer carries its "
                "own learning rate (e.g. optax.sgd(0.1)).")
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise TypeError(
                "optimizer must be an optax GradientTransformation (with init and update); "
                f"got {type(optimizer).__name__}.")
        return None
    if lr is None:
        raise TypeError("lr is required when no optimizer is given, e.g. lr=0.1.")
    if callable(lr):
        return check_schedule(lr)
    if type(lr) is float:  # the usual case, without NumPy
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0; got {lr}.")
        if lr < SMALLEST_SAFE_LR:
            _check_lr_representable(lr, params)
    elif is_concrete(lr):
        array = np.asarray(lr)
        if array.shape != () or isinstance(lr, (bool, np.bool_)) or not is_real_dtype(array.dtype):
            raise TypeError(f"lr must be a real scalar; got {lr!r}.")
        value = float(array)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"lr must be a finite number > 0; got {value}.")
        if value < SMALLEST_SAFE_LR:
            _check_lr_representable(value, params)
    return lr


def check_schedule(schedule):
    """Checks ``lr`` given as a schedule ``step -> rate`` (an optax schedule):
    called on an int32 step it must give a real scalar. Its values are
    traced in the loop, so only their shape and dtype are checked here."""
    try:
        rate = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as error:
        raise TypeError(
            f"lr is callable, so it is taken as a schedule step -> rate (as optax's "
            f"schedules are), but calling it on an int32 step failed: "
            f"{type(error).__name__}: {error}") from error
    dtype = getattr(rate, "dtype", None)
    if getattr(rate, "shape", None) != () or dtype is None or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        described = f"{dtype}{list(getattr(rate, 'shape', ()))}" if dtype is not None \
            else type(rate).__name__
        raise TypeError(
            f"lr is callable, so it is taken as a schedule step -> rate, but on an int32 "
            f"step it gave {described}, not a real scalar (shape (), a float or int dtype; "
            f"got shape {getattr(rate, 'shape', None)}). Return one rate per step, e.g. "
            "optax.linear_schedule(0.1, 0.01, 1000).")
    return schedule


def check_schedule_rates(schedule, start_step, steps):
    """Refuses a schedule ``lr`` that gives a negative or non-finite rate at
    any step ``t`` in ``[start_step, start_step + steps)`` of the run, as a
    scalar ``lr`` is refused (a rate of 0 passes: schedules warm up from and
    decay to 0). The rates are computed once, in one compiled call, blocks
    of steps vmapped (kept with the schedule: the same schedule checks
    again without compiling); nothing is added to the loop. A run of
    unknown length (a stream), a traced ``start_step`` or a schedule that
    closes over traced values is not checked here."""
    if steps is None or not is_concrete(start_step):
        return
    run = (schedule, int(start_step), int(steps))
    try:
        if run in _PASSED_SCHEDULES:
            return  # checked before (a schedule is called again with the same steps)
        first_bad = _first_bad_rate(schedule, jnp.int32(start_step), jnp.int32(steps))
    except TypeError:  # an unhashable callable: compiled for this call
        first_bad = jax.jit(functools.partial(_first_bad_rate, schedule))(
            jnp.int32(start_step), jnp.int32(steps))
    step, rate = first_bad
    if not (is_concrete(step) and is_concrete(rate)):
        return  # the schedule closes over values traced by jax.jit or jax.vmap
    if int(step) < int(start_step) + int(steps):
        raise ValueError(
            f"lr is a schedule, and every step's rate must be a finite number >= 0; "
            f"lr({int(step)}) = {float(rate):.6g} (this run's steps are {int(start_step)} to "
            f"{int(start_step) + int(steps) - 1}).")
    if len(_PASSED_SCHEDULES) >= 64:
        _PASSED_SCHEDULES.pop(next(iter(_PASSED_SCHEDULES)))
    try:
        _PASSED_SCHEDULES[run] = None
    except TypeError:
        pass  # an unhashable schedule is checked each call


_PASSED_SCHEDULES: dict = {}
"""The (schedule, start_step, steps) runs whose rates passed (the 64 latest)."""


_RATE_BLOCK = 16384
"""Steps whose rates one vmapped call of a schedule computes."""


@functools.partial(jax.jit, static_argnums=0)
def _first_bad_rate(schedule, start, steps):
    """``(t, schedule(t))`` for the first ``t`` in ``[start, start + steps)``
    whose rate is negative or not finite; ``t = start + steps`` if none."""
    end = start + steps
    rate_dtype = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32)).dtype
    rate_dtype = rate_dtype if jnp.issubdtype(rate_dtype, jnp.floating) else jnp.float32

    def block(carry):
        i, _, _ = carry
        offset = i * _RATE_BLOCK + jnp.arange(_RATE_BLOCK, dtype=jnp.int32)
        inside = (offset >= 0) & (offset < steps)  # >= 0: past int32 it wraps
        t = start + jnp.where(inside, offset, 0)  # never past the run (nor int32)
        rates = jax.vmap(schedule)(t).astype(rate_dtype)
        bad = inside & ~((rates >= 0) & jnp.isfinite(rates))
        first = jnp.argmax(bad)
        return i + 1, jnp.where(bad[first], t[first], end), rates[first]

    blocks = steps // _RATE_BLOCK + jnp.where(steps % _RATE_BLOCK > 0, 1, 0)  # no wrap
    _, step, rate = jax.lax.while_loop(
        lambda carry: (carry[0] < blocks) & (carry[1] == end), block,
        (jnp.int32(0), end, jnp.zeros((), rate_dtype)))
    return step, rate


SMALLEST_SAFE_LR = 6e-8
"""Every float dtype (float16 included) holds a learning rate at least this large."""


def _check_lr_representable(lr, params):
    for leaf in jax.tree.leaves(params):
        if not (hasattr(leaf, "dtype") or isinstance(leaf, (float, complex))):
            continue  # a leaf that does not train
        dtype = _dtype(leaf)
        if is_inexact_dtype(dtype) and np.asarray(lr, dtype) == 0:
            raise ValueError(f"lr={lr} is 0 in the params' dtype {dtype}: every update "
                             "would be zero. Pass a larger lr, or params of a wider dtype.")


def check_opt_state(optimizer, opt_state, trainable, *, part="params"):
    """``opt_state`` must be what ``optimizer.init(trainable)`` gives, leaf for
    leaf: structure, shapes and dtypes (``jax.eval_shape``: nothing runs).

    ``trainable`` is what the optimizer sees (``Model.split``); ``part`` names
    it in messages.
    """
    if optimizer is None or opt_state is None:
        return
    leaves, treedef = jax.tree.flatten(trainable)
    signatures = tuple(map(signature, leaves))
    try:
        hash(optimizer)
        expected = _cached_init_shapes(optimizer, treedef, signatures)
    except TypeError:  # an optimizer that does not hash
        expected = _init_shapes(optimizer, treedef, signatures)
    fix = (f" Pass the opt_state that this optimizer returned for these params "
           f"(result.opt_state), or optimizer.init({part}), or drop it to start afresh.")
    if part != "params":
        fix += (" The trainable part is params with None at every leaf that does not train "
                "(frozen, or not a float array), as eqx.filter(params, eqx.is_inexact_array) "
                "gives.")
    got, got_def = jax.tree_util.tree_flatten_with_path(opt_state)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    if got_def != expected_def:
        raise ValueError(
            f"Run(opt_state=) does not have the structure optimizer.init({part}) gives: got "
            f"{got_def}, expected {expected_def}." + fix)
    for (path, leaf), want in zip(got, expected_leaves):
        shape, dtype, weak = signature(leaf) if hasattr(leaf, "dtype") or isinstance(
            leaf, (int, float, complex)) else (None, type(leaf).__name__, False)
        # A weakly typed leaf (a Python number) takes the dtype the loop gives it.
        if shape != tuple(want.shape) or (dtype != want.dtype and not weak):
            raise ValueError(
                f"opt_state{jax.tree_util.keystr(path)} is {dtype}{list(shape or ())}, but "
                f"optimizer.init({part}) gives {want.dtype}{list(want.shape)} there." + fix)


def _init_shapes(optimizer, treedef, signatures):
    params = jax.tree.unflatten(treedef, [spec(s) for s in signatures])
    return jax.eval_shape(optimizer.init, params)


_cached_init_shapes = functools.lru_cache(maxsize=64)(_init_shapes)


def _dtype(leaf):
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)
