"""The benchmark workloads: same data and same schedule for every method.

A workload is one row of a table; :data:`FULL` holds the sizes the report
quotes (issue 3), :data:`SMOKE` the same workloads shrunk so CI runs every
method once in seconds. :func:`make_problem` draws the data and the schedule
once, as NumPy, so every method (JAX, torch, scikit-learn) sees the same bits.
"""

import dataclasses
from typing import Optional

import jax
import numpy as np

import functional_sgd as fsgd


@dataclasses.dataclass(frozen=True)
class Workload:
    """One problem: ``steps`` updates of ``linear_mse`` on ``n x d`` data.

    ``schedule``: ``"full"`` (batch descent), ``"random"`` (``batch_size``
    rows drawn independently each step, the lesson's ``rand_idx``) or
    ``"epoch"`` (shuffled passes over the rows, ``batch_size`` rows a step,
    whole epochs only: ``steps * batch_size`` a multiple of ``n``).
    ``sweep``: number of learning rates trained side by side (0: one ``lr``).
    """

    name: str
    n: int
    d: int
    steps: int
    schedule: str = "full"
    batch_size: Optional[int] = None
    lr: float = 0.1
    sweep: int = 0
    large: bool = False  # reported against memory bandwidth

    @property
    def x_bytes(self):
        return self.n * self.d * 4  # float32

    @property
    def label(self):
        return f"n={self.n:,}, d={self.d}, {self.steps:,} steps"


FULL = (
    Workload("lesson", n=100, d=2, steps=100),
    Workload("long lesson", n=100, d=2, steps=10_000),
    Workload("mini-batch", n=100_000, d=10, steps=1_000, schedule="random", batch_size=64),
    Workload("stochastic", n=200_000, d=2, steps=200_000, schedule="epoch", batch_size=1),
    # fastai's Learner as the course runs it: the lesson's data, batches of 10, 5 epochs.
    Workload("lesson in batches of 10", n=100, d=2, steps=50, schedule="epoch", batch_size=10),
    Workload("full batch 1e6x2", n=1_000_000, d=2, steps=100, large=True),
    Workload("full batch 1e5x100", n=100_000, d=100, steps=100, large=True),
    Workload("full batch 1e4x1000", n=10_000, d=1_000, steps=100, large=True),
    Workload("sweep", n=100, d=2, steps=100, sweep=256),
)

# The same workloads shrunk: every method runs each once in CI in seconds.
_SMOKE_SIZES = {
    "lesson": dict(steps=10),
    "long lesson": dict(steps=50),
    "mini-batch": dict(n=1_000, steps=20, batch_size=8),
    "stochastic": dict(n=300, steps=300),
    "lesson in batches of 10": dict(steps=20),
    "full batch 1e6x2": dict(n=2_000, steps=5),
    "full batch 1e5x100": dict(n=500, steps=5),
    "full batch 1e4x1000": dict(n=100, steps=5),
    "sweep": dict(steps=10, sweep=8),
}
SMOKE = tuple(dataclasses.replace(w, **_SMOKE_SIZES[w.name]) for w in FULL)

# Full sizes but for the workloads whose Python-driven peers (the lesson's torch
# loop, Keras one step an execution) take minutes: 10x fewer steps there, so a
# cross-device run with every peer fits a short GPU session (issue 24).
_SHORT_SIZES = {
    "long lesson": dict(steps=1_000),
    "stochastic": dict(n=20_000, steps=20_000),
}
SHORT = tuple(dataclasses.replace(w, **_SHORT_SIZES.get(w.name, {})) for w in FULL)

SIZES = {"full": FULL, "short": SHORT, "smoke": SMOKE}


@dataclasses.dataclass(frozen=True)
class Problem:
    """A workload's inputs as float32/int32 NumPy: ``indices`` is ``None`` for
    full batch, ``lrs`` is ``None`` unless the workload is a sweep."""

    workload: Workload
    x: np.ndarray
    y: np.ndarray
    start: np.ndarray
    indices: Optional[np.ndarray]
    lrs: Optional[np.ndarray]


def make_problem(workload, seed=0):
    """Draws the data, start and schedule of ``workload`` from ``seed``.

    >>> p = make_problem(SMOKE[2])
    >>> p.x.shape, p.y.shape, p.indices.shape, p.x.dtype
    ((1000, 10), (1000,), (20, 8), dtype('float32'))
    """
    data_key, schedule_key = jax.random.split(jax.random.key(seed))
    w = workload
    weights = fsgd.LESSON_A if w.d == 2 else np.linspace(-1.0, 1.0, w.d, dtype=np.float32)
    x, y = fsgd.lesson_data(data_key, w.n, a=weights)
    start = np.asarray(fsgd.LESSON_START if w.d == 2 else np.zeros(w.d), np.float32)
    if w.schedule == "full":
        indices = None
    elif w.schedule == "random":
        indices = fsgd.sample_indices(schedule_key, w.n, w.steps, w.batch_size)
    elif w.schedule == "epoch":
        if w.n % w.batch_size or (w.steps * w.batch_size) % w.n:
            raise ValueError("an epoch schedule needs batch_size to divide n and whole "
                             f"epochs (steps * batch_size a multiple of n); got {w}.")
        indices = fsgd.sample_indices(schedule_key, w.n, w.steps, w.batch_size,
                                       replace=False)
    else:
        raise ValueError(f"schedule must be 'full', 'random' or 'epoch'; got {w.schedule!r}.")
    # The sweep stays below lr = 1, where the lesson's problem starts to diverge.
    lrs = np.geomspace(1e-3, 0.9, w.sweep).astype(np.float32) if w.sweep else None
    return Problem(w, np.asarray(x), np.asarray(y), start,
                   None if indices is None else np.asarray(indices), lrs)


def truth(problem):
    """Final params of every run in float64 NumPy (``(d,)``, or ``(sweep, d)``),
    computed apart from the library: each method's float32 result is checked
    against it.

    Each step is ``a <- a - lr * 2/b X_B^T (X_B a - y_B)``, the gradient of
    ``mean((X_B a - y_B)^2)`` over the ``b`` rows ``B`` of the step.
    """
    w = problem.workload
    x, y = problem.x.astype(np.float64), problem.y.astype(np.float64)
    lrs = np.array([w.lr]) if problem.lrs is None else problem.lrs.astype(np.float64)
    params = np.tile(problem.start.astype(np.float64), (len(lrs), 1))  # (runs, d)
    for t in range(w.steps):
        rows = slice(None) if problem.indices is None else problem.indices[t]
        xb, yb = x[rows], y[rows]
        residual = params @ xb.T - yb  # (runs, b)
        params = params - lrs[:, None] * (2.0 / len(yb)) * (residual @ xb)
    return params[0] if problem.lrs is None else params


def close_to_truth(params, expected):
    """Largest ``|p - e| / (1 + |e|)``: float32 rounding keeps it near 1e-6;
    a wrong schedule, update or learning rate moves it past 1e-2."""
    params = np.asarray(params, np.float64)
    return float(np.max(np.abs(params - expected) / (1.0 + np.abs(expected))))


AGREEMENT = 1e-3
"""Bound on :func:`close_to_truth` for a float32 run: float32 descent rounds
at ~1e-7 a step and a stable descent damps it (observed <= ~1e-5 over
200 000 stochastic steps), while a wrong batch or update errs by > 1e-2."""
