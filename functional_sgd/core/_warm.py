"""A warm call's front door: ``fit`` called again with the arrays of an earlier call.

``fit``'s checks (shapes, dtypes, finiteness, index ranges, the loss traced
once) take longer in Python than a small run itself (a hand-written scan
of the lesson in batches of 10 under ``tune_cpu``). Their verdict
depends only on the arguments, and a JAX array never changes its values: a
call that passes the same JAX arrays, loss and options as an earlier call
that passed the checks would pass them again. Such a call goes straight to
the compiled loop; only ``lr`` (checked anew) and ``params`` (the same
shape, dtype and weak type as before, so the same verdict) may differ, which covers a
Python loop over learning rates and a run continued from ``result.params``.
Params may be one array or a tuple, list or dict of them (``(w, b)``): the
checks of such params depend only on their structure and each leaf's
shape, dtype and weak type. On 2 cores the checks run several times slower
right after a run (its batches have pushed the interpreter out of the
caches), a visible part of a run of 2,560 steps against the same run written
by hand (``bench/investigations/evaluate_overhead.py``). A run that
evaluates held-out data (``evaluate``, ``monitor``, ``restore_best``...) is
repeated the same way when its ``eval_data`` is the same tuple of JAX
arrays: the held-out arrays are part of the call's key.

A JAX array on the CPU may be a view of host memory that its owner writes
to (``jax.device_put`` of an aligned NumPy array, DLPack). A remembered call
keeps the bytes of each such array (up to ``SNAPSHOT_BYTES``) as they passed
its checks, and compares them on every call (bytes read in place, well under the
microseconds the checks take); an array that changed, or is larger, has the
checks of its values (finiteness, the range of indices) read again
(``_data_checks.values_still_pass``), and a call whose arrays no longer pass
takes the full path, which refuses them.

NumPy data (which can be written to between calls), params of a pytree
class or with NumPy or Python leaves, chunks, meshes, checkpoints and a
user's model (``rng``, ``state``, ``has_aux``, ``trainable``,
``opt_state``) always take the full path.
Arrays are held by weak references: remembering a call keeps no data alive.

What the host knows of a remembered run is worked out once, at its first
repeat (:class:`Again`): the step counter and stop state it starts from, on
the device (NumPy scalars are copied there on every call), and the step
count after it; on the params' device when that is not the default one (a
CPU device of a GPU machine), so no call copies them between devices. A
float ``lr`` that repeats is passed as the device scalar made of it (a
Python float, too, is copied on every call); its bits and the compiled
program are the same.
"""

import ctypes
import weakref
from typing import Any, NamedTuple

import jax

from .._types import FitResult, fit_result
from ._data_checks import Facts
from ._keys import CONCRETE, CONCRETE_KEY
from ._evaluate import best_step, restored
from ._initialize import best_start
from ._repeat import (OUTPUT, carry_and_record, flat_loop_outputs, home_device, known_counts,
                      reads_stop)

_PARAMS, _OPT_STATE, _LOSSES, _DIVERGED_AT, _STEPS_RUN, _TRAJECTORY = (OUTPUT[name] for name in (
    "params", "opt_state", "losses", "diverged_at", "steps_run", "trajectory"))

KEPT = 16
"""Calls remembered at once; past this many, all are forgotten."""


class Warm(NamedTuple):
    """What a call that passed the checks leaves for the next one like it."""

    arrays: tuple     # weak references to the arrays the call named
    params_signature: Any  # the params' structure, shapes, dtypes and weak types
    again: Any        # the :class:`Again` that runs it
    snapshots: tuple | None  # :func:`snapshots` of its arrays as they passed the checks

    def unchanged(self, arrays):
        """Whether each array that may share host memory holds the bytes it
        held when the call passed its checks (then their verdict stands);
        ``False`` when one has changed or was deleted (the full path says
        so), or cannot be compared cheaply."""
        if self.snapshots is None:
            return False
        for i, memory, held in self.snapshots:
            if arrays[i].is_deleted() or bytes(memory) != held:
                return False
        return True


SNAPSHOT_BYTES = 65536
"""Largest array whose bytes a remembered call keeps, to tell in one compare
that it has not changed (larger ones are read again by the checks)."""


def snapshots(arrays):
    """``(index, memory, bytes)`` of each of ``arrays`` that may be a view of
    host memory its owner writes to (a JAX array on one CPU device: see
    ``_data_checks.may_share_host_memory``); ``None`` when one is too large
    or on several devices. Arrays XLA owns elsewhere never change: none is
    kept for them, nor for keys (their values are not checked). ``memory``
    reads the array's buffer in place: :meth:`Warm.unchanged` reads it only
    while the array is alive and not deleted."""
    kept = []
    for i, a in enumerate(arrays):
        if type(a) is not CONCRETE:
            continue
        devices = a.devices()
        if not any(device.platform == "cpu" for device in devices):
            continue
        if len(devices) != 1 or a.nbytes > SNAPSHOT_BYTES:
            return None
        memory = (ctypes.c_char * a.nbytes).from_address(a.unsafe_buffer_pointer())
        kept.append((i, memory, bytes(memory)))
    return tuple(kept)


def key(head, params, data, batch_key):
    """``(key, arrays, signature)`` of a call: the dictionary key, the arrays
    it names and the signature of its params (:func:`signature`), or
    ``None`` when the call is not one that may skip its checks.

    ``head``: the :class:`~functional_sgd.core._keys.Part` of everything
    else the call was given (its loss and options: ``_trainer.spec_part``),
    or ``None`` when that alone makes it a call checked every time.
    """
    if head is None or type(data) is not tuple:
        return None
    for a in data:
        if type(a) is not CONCRETE:
            return None
    arrays = [*data, *head.arrays]
    if batch_key is not None:
        if type(batch_key) is not CONCRETE and type(batch_key) is not CONCRETE_KEY:
            return None
        arrays.append(batch_key)
    params_signature = signature(params)
    if params_signature is None:
        return None
    return (len(arrays), *map(id, arrays), jax.config.jax_enable_x64, *head.flat), \
        tuple(arrays), params_signature


def signature(params):
    """What the checks of ``params`` depend on, or ``None`` for params that
    always take the full path.

    One JAX array: its shape, dtype and weak type (``aval``). A tuple, list
    or dict of them (nested, as ``(w, b)`` or ``{"w": w, "b": b}``): its
    structure and every leaf's aval. Anything else (a NumPy or Python leaf,
    a tracer, a pytree class of the user's, whose structure may hold
    anything) is checked on every call.
    """
    if type(params) is CONCRETE:
        return params.aval
    if type(params) not in _CONTAINERS:
        return None
    leaves, structure = jax.tree_util.tree_flatten(params)
    if not leaves or not _plain_structure(structure):
        return None
    for a in leaves:
        if type(a) is not CONCRETE:
            return None
    return structure, tuple(a.aval for a in leaves)


_CONTAINERS = (tuple, list, dict)
_NODES = (*_CONTAINERS, type(None))


def _plain_structure(structure):
    """Whether every node of ``structure`` is a leaf, a tuple, list or dict, or None."""
    node = structure.node_data()  # None for a leaf
    return node is None or (node[0] in _NODES and all(map(_plain_structure,
                                                           structure.children())))


class Memory:
    """Calls that passed their checks and ran, so that the same call again
    skips them. A :class:`~functional_sgd.Trainer` holds one; ``fit`` holds
    one for the process. At most ``kept`` calls are remembered: past that,
    all are forgotten. Arrays are held by weak references. ``facts``: what
    the checks of its calls learned about their JAX arrays
    (``_data_checks.Facts``), so a call not remembered whole still skips
    the checks an array passed before."""

    def __init__(self, kept=KEPT):
        self.kept = kept
        self._calls = {}
        self.facts = Facts()

    def __len__(self):
        return len(self._calls)

    def recall(self, call):
        """The :class:`Warm` of an earlier call equal to ``call`` whose
        params had the same signature, or ``None``."""
        warm = self._calls.get(call[0])
        if warm is None or call[2] != warm.params_signature:
            return None
        for ref, a in zip(warm.arrays, call[1]):
            if ref() is not a:  # an id reused by a new array
                return None
        return warm

    def remember(self, call, spec, carry):
        """Remembers a call that passed the checks and ran (``carry``: its start)."""
        if len(self._calls) >= self.kept:
            self._calls.clear()
        self._calls[call[0]] = Warm(tuple(map(weakref.ref, call[1])), call[2],
                                    Again(spec, carry), snapshots(call[1]))

    def passed_again(self, call, warm):
        """Notes that ``call``'s arrays, changed since ``warm`` was kept, passed
        the checks of their values again: the next call compares with them."""
        self._calls[call[0]] = warm._replace(snapshots=snapshots(call[1]))

    def forget(self):
        """Drops every remembered call and fact: the next of each is checked again."""
        self._calls.clear()
        self.facts = Facts()

    def last(self):
        """The :class:`Again` of the call remembered last (for profiling)."""
        return next(reversed(self._calls.values())).again


class Again:
    """A remembered call run again: ``run(spec, carry, inputs)`` with new
    ``params`` and ``lr``, returning the :class:`FitResult`.

    What the host knows is made at the first repeat and kept: the start's
    step counter and stop state on the device, and a run's counts after it
    (``steps_run``, ``step``) when no rule can stop it early. No namedtuple
    is built but the result (each is built in Python, slowly).
    """

    def __init__(self, spec, carry):
        self.spec = spec
        self.start = carry.step, carry.stop  # not its params: nothing big is kept alive
        self.known = None  # (step, stop, steps_run, step_after) on the device
        self.device = None  # where the call's arrays are, when not the default device
        self.last_lr = (None, None)  # a float lr and its device scalar, once it repeats

    def __call__(self, params, data, lr, key, traced):
        """The run from ``params`` on ``data`` with ``lr`` and ``key``;
        ``traced``: the arrays it reads from the options (``_resolve.Traced``,
        read from the call's own options: kept here, they would stay alive)."""
        indices, tol, patience, eval_data = traced
        known = self.known or self._know(params)
        step, stop, steps_run, step_after = known
        if type(lr) is float:
            lr = self._lr_on_device(lr)
        best = best_start(self.spec, params, None)
        # The fields of Carry(params, opt_state, step, stop, state, best) and of Inputs(data,
        # lr, key, indices, tol, patience, rng, eval_data), without building either.
        out = flat_loop_outputs(self.spec, (params, None, step, stop, None, best,
                                            data, lr, key, indices, tol, patience, None,
                                            eval_data), again=True)
        if out[_STEPS_RUN] is not None:  # a stop rule or evaluations: the loop counted
            carry, record = carry_and_record(out)
            if best is not None:
                carry = restored(carry)
            return fit_result(carry, record, best_step(self.spec.evaluation, record))
        return FitResult(out[_PARAMS], out[_LOSSES], out[_DIVERGED_AT], steps_run, step_after,
                         out[_OPT_STATE], out[_TRAJECTORY])

    def _know(self, params):
        self.device = home_device(params)
        with jax.ensure_compile_time_eval():  # concrete even inside another jit
            step, stop = jax.device_put(self.start, self.device)  # compiles nothing
            counts = known_counts(self.spec, self.start[0], self.device)
        if not reads_stop(self.spec):
            stop = None  # as flat_loop_outputs passes it
        self.known = (step, stop, *counts)
        return self.known

    def _lr_on_device(self, lr):
        """``lr`` as a device scalar once the same float comes a second time
        (one a call would cost a copy each); a new float is passed as it is."""
        seen, on_device = self.last_lr  # one tuple: threads see a matching pair
        if lr != seen:
            self.last_lr = (lr, None)
            return lr
        if on_device is None:
            with jax.ensure_compile_time_eval():  # weakly typed, as the float: the same program
                on_device = jax.device_put(lr, self.device)
            self.last_lr = (lr, on_device)
        return on_device
