"""Peers a user could pick instead of ``fit``: the same workloads, written as
each library's users write them, every one replaying the workload's own
schedule so its result is checked against float64 like ``fit``'s.

* :func:`handwritten_scan`: the ten lines of JAX anyone writes, the floor
  plain XLA gives (``fit``'s overhead is measured against it);
* :func:`keras_fit`: Keras 3 on its JAX backend, ``model.fit``;
* in :mod:`bench.peers_torch`, ``torch.compile`` around the lesson's step and
  around the whole loop, and fastai's ``Learner`` with its ``SGD``.

A peer whose package is missing (or whose compiler fails here) raises
:class:`Unavailable`; the suite skips it and the report says why.
"""

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np


class Unavailable(Exception):
    """A peer that cannot run here; the message says why and what would fix it."""


def _rows(problem):
    """Every step's rows in order, ``(steps * batch_size,)``; ``None`` for full batch."""
    return None if problem.indices is None else problem.indices.reshape(-1)


# ---- the hand-written scan -------------------------------------------------

def handwritten_scan(problem, device):
    """``jax.jit`` of a ``lax.scan`` over the schedule: value_and_grad of the
    loss, ``p - lr * g``, each step's rows gathered with ``x[idx]``. No layout,
    moments or CPU set-up: what XLA gives a plain program. A sweep is
    ``jax.vmap`` of it over the learning rates, under the same ``jax.jit``."""
    put = lambda a: None if a is None else jax.device_put(a, device)
    start, x, y, indices = (put(a) for a in (problem.start, problem.x, problem.y,
                                             problem.indices))
    w = problem.workload

    def loss(p, xb, yb):
        return jnp.mean((xb @ p - yb) ** 2)

    def train(p, lr, x, y, indices):
        def step(p, rows):
            xb, yb = (x, y) if rows is None else (x[rows], y[rows])
            value, g = jax.value_and_grad(loss)(p, xb, yb)
            return p - lr * g, value

        return jax.lax.scan(step, p, indices, length=w.steps)  # (params, losses)

    if problem.lrs is None:
        train_all, lrs = jax.jit(train), put(np.float32(w.lr))
    else:
        train_all = jax.jit(jax.vmap(train, in_axes=(None, 0, None, None, None)))
        lrs = put(problem.lrs)

    def run():
        params, _losses = jax.block_until_ready(train_all(start, lrs, x, y, indices))
        return np.asarray(params)

    return run


# ---- Keras 3 on JAX --------------------------------------------------------

KERAS_UNROLL_BYTES = 256 * 2**20
"""Largest copy of the schedule's rows handed to Keras (see :func:`keras_fit`)."""


def import_keras():
    """Keras on its JAX backend: ``KERAS_BACKEND`` is read once, at keras's
    first import, so it is set here before it; a keras that another module
    imported first with another backend cannot be switched."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError as error:
        raise Unavailable(f"keras does not import ({error}): pip install 'keras>=3' "
                          "(the bench extra)") from None
    if keras.backend.backend() != "jax":
        raise Unavailable(f"keras runs on its {keras.backend.backend()} backend in this "
                          "process (imported before KERAS_BACKEND=jax was set)")
    return keras


def keras_unrolls(workload):
    """Whether the schedule's rows, one batch after another, fit in
    :data:`KERAS_UNROLL_BYTES` (then one epoch of Keras holds every step)."""
    rows = workload.steps * (workload.batch_size or workload.n)
    return rows * (workload.d + 1) * 4 <= KERAS_UNROLL_BYTES


def keras_fit(problem, device, *, per_execution):
    """``model.fit`` of ``Dense(1, use_bias=False)`` (``x`` holds the column
    of ones), ``SGD(lr)``, MSE, ``jit_compile=True``; ``per_execution``: 1 or
    ``"steps"`` for ``steps_per_execution``.

    Keras shuffles with its own generator, so instead it gets our schedule
    replayed: every step's rows in order (``x[indices].reshape(-1, d)``, a
    full batch repeated ``steps`` times) with ``batch_size`` the step's
    rows and ``shuffle=False``, one epoch. The result is then the float64
    run's, checked with the same bound as every method. A full batch too
    large to repeat is one epoch per step (``epochs=steps``), as users write
    full-batch Keras; there an execution cannot span steps.

    Keras 3's JAX trainer jits one step; ``steps_per_execution`` runs that
    many jitted steps from Python between callbacks
    (``keras/src/backend/jax/trainer.py``), it does not fuse them.
    """
    keras = import_keras()
    w = problem.workload
    rows = _rows(problem)
    if rows is None and keras_unrolls(w):
        rows = np.tile(np.arange(w.n), w.steps)
    x, y = (problem.x, problem.y) if rows is None else (problem.x[rows], problem.y[rows])
    epochs = w.steps if rows is None else 1
    steps_per_execution = w.steps if per_execution == "steps" else 1
    with _keras_device(device):
        model = keras.Sequential([keras.Input((w.d,)), keras.layers.Dense(1, use_bias=False)])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=w.lr), loss="mse",
                      jit_compile=True, steps_per_execution=steps_per_execution)
    kernel = problem.start[:, None]
    y = y[:, None]

    def run():
        with _keras_device(device):
            model.layers[0].set_weights([kernel])
            model.fit(x, y, batch_size=w.batch_size or w.n, epochs=epochs, shuffle=False,
                      verbose=0)
            return model.layers[0].get_weights()[0][:, 0]

    return run


def _keras_device(device):
    return contextlib.nullcontext() if device is None else jax.default_device(device)
