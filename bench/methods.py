"""The methods compared: one entry of :data:`METHODS` each.

A method's ``prepare(problem, device)`` does everything that is not the
training run (moving data to the device, building jitted steps) and returns
``run()``, which trains on the whole workload and returns the final params
as NumPy (so every run ends synchronised with the host). Adding a method,
e.g. a data-parallel ``fit``, is one more entry in the table. The peers a
user could pick instead of ``fit`` (a hand-written scan, Keras, torch.compile,
fastai) live in :mod:`bench.peers` and :mod:`bench.peers_torch`; one that
cannot run here raises :class:`bench.peers.Unavailable` and is skipped with
its reason.
"""

import dataclasses
import itertools
import os
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from bench import peers, peers_torch
from bench.peers import Unavailable  # noqa: F401  (re-exported: the suite catches it)

BASELINE = "torch reference"
SCAN = "hand-written jax.jit(lax.scan)"
KERAS = ("keras model.fit (jit, steps_per_execution=1)",
         "keras model.fit (jit, steps_per_execution=steps)")
TORCH_COMPILE = ("torch.compile(step), Python loop",
                 "torch.compile(whole loop, unrolled, fullgraph)",
                 "torch.compile(torch scan, fullgraph)")
FASTAI = "fastai Learner, SGD"


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    engine: str  # "jax", "keras" (on JAX), "torch" or "sklearn": where it can run
    prepare: Callable  # (problem, device) -> run
    applies: Callable  # (workload) -> bool
    slow: bool = False  # compiles for seconds: not in the smoke run unless asked

    @property
    def on_jax(self):
        """Compiles with JAX: the suite clears JAX's caches before its first call."""
        return self.engine in ("jax", "keras")


def single(workload):
    return workload.sweep == 0


def sweep(workload):
    return workload.sweep > 0


def _jax_inputs(problem, device):
    put = lambda a: None if a is None else jax.device_put(a, device)
    return (put(problem.start), put(problem.x), put(problem.y), put(problem.indices),
            put(problem.lrs))


def _rows(indices):
    """``fit``'s rows for a workload's schedule: ``None`` (full batch) stays ``None``.
    Built once, outside the timed call."""
    return None if indices is None else fsgd.Schedule(indices)


def _fit_fused(problem, device, fast_path="auto"):
    """``fit`` as users call it (``fast_path="auto"``), or with the exact
    full-batch MSE path forced on (``True``) or off (``False``, the general
    ``jax.grad`` path that any loss takes)."""
    start, x, y, indices, _ = _jax_inputs(problem, device)
    w = problem.workload
    rows = _rows(indices)
    plan = fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=fast_path))

    def run():
        result = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=w.lr, steps=w.steps, rows=rows,
                          run=plan)
        return np.asarray(result.params)

    return run


def _trainer_call(problem, device):
    """A :class:`functional_sgd.Trainer` built once, outside the timed call, and
    called again: what a user who repeats one run writes instead of ``fit``
    (its calls skip turning ``fit``'s keywords into a spec and its key)."""
    start, x, y, indices, _ = _jax_inputs(problem, device)
    w = problem.workload
    trainer = fsgd.Trainer(fsgd.linear_mse, steps=w.steps, rows=_rows(indices))

    def run():
        return np.asarray(trainer(start, (x, y), lr=w.lr).params)

    return run


def _fit_new_inputs(problem, device, *, new_lr):
    """``fit`` called with a new lr, or new data arrays of the same shape, on
    every call: what a user's own sweep or data pipeline does. Nothing may
    recompile, and the checks must stay cheap."""
    start, x, y, indices, _ = _jax_inputs(problem, device)
    w = problem.workload
    variants = 16
    # lrs within 0.2% of the workload's (the result stays comparable); data
    # arrays are fresh copies, each checked anew for NaN and inf.
    lrs = [w.lr * (1 + 1e-4 * k) for k in range(variants)]
    data = [(x, y)] * variants if new_lr else [
        (jnp.array(x, copy=True), jnp.array(y, copy=True)) for _ in range(variants)]
    calls = itertools.count()
    rows = _rows(indices)

    def run():
        k = next(calls) % variants
        lr = lrs[k] if new_lr else w.lr
        result = fsgd.fit(fsgd.linear_mse, start, data[k], lr=lr, steps=w.steps, rows=rows)
        return np.asarray(result.params)

    return run


def _fit_vmap(problem, device, *, jitted):
    """The sweep as ``jax.vmap`` of ``fit`` over the learning rates. Without
    ``jax.jit`` around it, JAX re-runs the batching machinery on every call."""
    start, x, y, indices, lrs = _jax_inputs(problem, device)
    steps = problem.workload.steps
    rows = _rows(indices)

    def one(lr):
        return fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=steps, rows=rows).params

    train_all = jax.jit(jax.vmap(one)) if jitted else jax.vmap(one)
    return lambda: np.asarray(train_all(lrs))


def _fit_each_lr(problem, device):
    start, x, y, indices, lrs = _jax_inputs(problem, device)
    steps = problem.workload.steps
    rows = _rows(indices)

    def run():
        return np.stack([np.asarray(fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr,
                                             steps=steps, rows=rows).params)
                         for lr in lrs])

    return run


def _batches(problem):
    """The row schedule as host rows per step, ``None`` rows for full batch."""
    if problem.indices is None:
        return [None] * problem.workload.steps
    return list(problem.indices)


def _python_loop(step, state, problem, device):
    """Python drives the steps; each step is one jitted call (no host sync)."""
    start, x, y, _, _ = _jax_inputs(problem, device)
    rows_per_step = _batches(problem)

    def run():
        params, opt_state, losses = start, state(start), []
        for rows in rows_per_step:
            loss, params, opt_state = step(params, opt_state, x, y, rows)
            losses.append(loss)
        jax.block_until_ready(losses)  # no jnp.stack: one op of `steps` operands
        return np.asarray(params)

    return run


def _gather(x, y, rows):
    return (x, y) if rows is None else (x[rows], y[rows])


def _jitted_step(problem, device):
    lr = np.float32(problem.workload.lr)

    @jax.jit
    def step(params, opt_state, x, y, rows):
        loss, grads = jax.value_and_grad(fsgd.linear_mse)(params, *_gather(x, y, rows))
        return loss, params - lr * grads, opt_state

    return _python_loop(step, lambda params: None, problem, device)


def _optax_loop(problem, device):
    import optax

    optimizer = optax.sgd(problem.workload.lr)

    @jax.jit
    def step(params, opt_state, x, y, rows):
        loss, grads = jax.value_and_grad(fsgd.linear_mse)(params, *_gather(x, y, rows))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), opt_state

    return _python_loop(step, optimizer.init, problem, device)


def _torch_inputs(problem, device):
    import torch

    as_tensor = lambda a: torch.as_tensor(np.array(a), device=device)
    return as_tensor(problem.start), (as_tensor(problem.x), as_tensor(problem.y))


def _torch_reference(problem, device):
    import reference

    start, data = _torch_inputs(problem, device)
    w = problem.workload
    lrs = [w.lr] if problem.lrs is None else [float(lr) for lr in problem.lrs]

    def run():
        finals = [reference.fit(fsgd.linear_mse, start, data, lr=lr, steps=w.steps,
                                indices=problem.indices)[0] for lr in lrs]
        return finals[0] if problem.lrs is None else np.stack(finals)

    return run


def _sklearn_sgd(problem, device):
    """scikit-learn's per-sample SGD on the rows in the schedule's order.

    Its squared loss is ``(x w - y)^2 / 2``, so ``eta0 = 2 lr`` makes each
    update ``w -= lr * grad (x w - y)^2``: the same step as ``fit``'s.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDRegressor

    order = problem.indices[:, 0]
    x, y = problem.x[order].astype(np.float64), problem.y[order].astype(np.float64)
    start = problem.start.astype(np.float64)

    def run():
        model = SGDRegressor(penalty=None, learning_rate="constant",
                             eta0=2 * problem.workload.lr, fit_intercept=False,
                             shuffle=False, max_iter=1, tol=None)
        with warnings.catch_warnings():  # one pass is what we ask for, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y, coef_init=start)
        return model.coef_

    return run


def _lesson(workload):
    return workload.name == "lesson"


def _full_batch_lesson(workload):
    """Where ``fast_path="auto"`` picks the moments on the lesson's own data."""
    return workload.name in ("lesson", "long lesson")


def _large(workload):
    return workload.large


def _one_pass_of_rows(workload):
    """One shuffled pass, a row a step: what one ``SGDRegressor`` epoch does."""
    return workload.schedule == "epoch" and workload.batch_size == 1 and \
        workload.steps == workload.n


def _python_driven(workload):
    """Peers that run each step from Python: not on 200 000 steps, where a
    case would take minutes (the torch reference already shows what a Python
    loop of eager steps costs there)."""
    return single(workload) and workload.steps <= 10_000


def _keras_in_one_execution(workload):
    """Where one epoch holds every step (see :func:`bench.peers.keras_fit`)."""
    return _python_driven(workload) and peers.keras_unrolls(workload)


def _unrolled(workload):
    """Dynamo unrolls a Python loop: its compile time grows with the steps."""
    return single(workload) and workload.steps <= 100


def _fastai(workload):
    return workload.name in ("lesson", "lesson in batches of 10", "mini-batch")


METHODS = (
    Method(BASELINE, "torch", _torch_reference, lambda w: True),
    Method("jax: Python loop of a jitted step", "jax", _jitted_step, single),
    Method("optax.sgd, Python loop", "jax", _optax_loop, single),
    Method("sklearn SGDRegressor", "sklearn", _sklearn_sgd, _one_pass_of_rows),
    Method("fit", "jax", _fit_fused, single),
    Method("Trainer, built once", "jax", _trainer_call, single),
    Method("fit, general path (fast_path=False)", "jax",
           partial(_fit_fused, fast_path=False), lambda w: w.large or _full_batch_lesson(w)),
    Method("fit, exact MSE path (fast_path=True)", "jax",
           partial(_fit_fused, fast_path=True), _large),
    Method("fit, new lr each call", "jax", partial(_fit_new_inputs, new_lr=True), _lesson),
    Method("fit, new data each call", "jax", partial(_fit_new_inputs, new_lr=False), _lesson),
    Method("fit, Python loop over lrs", "jax", _fit_each_lr, sweep),
    Method("jax.vmap(fit)", "jax", partial(_fit_vmap, jitted=False), sweep),
    Method("jax.jit(jax.vmap(fit))", "jax", partial(_fit_vmap, jitted=True), sweep),
    # Peers a user could pick instead (bench/peers.py, bench/peers_torch.py).
    Method(SCAN, "jax", peers.handwritten_scan, lambda w: True),
    Method(KERAS[0], "keras", partial(peers.keras_fit, per_execution=1), _python_driven,
           slow=True),
    Method(KERAS[1], "keras", partial(peers.keras_fit, per_execution="steps"),
           _keras_in_one_execution, slow=True),
    Method(TORCH_COMPILE[0], "torch", peers_torch.torch_compiled_step, _python_driven,
           slow=True),
    Method(TORCH_COMPILE[1], "torch", peers_torch.torch_compiled_loop, _unrolled, slow=True),
    Method(TORCH_COMPILE[2], "torch", peers_torch.torch_compiled_scan,
           lambda w: single(w) and not _unrolled(w), slow=True),
    Method(FASTAI, "torch", peers_torch.fastai_learner, _fastai),
)


FIT_FAST_PATH = {"fit": "auto", "Trainer, built once": "auto",
                 "fit, general path (fast_path=False)": False,
                 "fit, exact MSE path (fast_path=True)": True}


def x_reads_per_step(method, workload):
    """How many times a full-batch step of ``method`` reads ``x``: 2 (the
    prediction, then the gradient), 1 (``fit``'s one-pass step, see
    ``speed/_one_pass.py``) or 0 (the exact MSE path: its moments read ``x``
    once per call, then each step costs ``O(d²)``)."""
    fast_path = FIT_FAST_PATH.get(method)
    if fast_path is None:
        return 2
    w = workload
    x, y = (jax.ShapeDtypeStruct(shape, jnp.float32) for shape in ((w.n, w.d), (w.n,)))
    plan = fsgd.speed.decide(fsgd.speed.SpeedPlan(exact_moments=fast_path), fsgd.speed.Problem(
        exact_mse=True, row="squared_error", full_batch=True, steps=w.steps,
        params=jax.ShapeDtypeStruct((w.d,), jnp.float32), data=(x, y)))
    return 0 if plan.exact_moments else 1 if plan.one_pass else 2


TUNE_CPU_ENV = "FSGD_BENCH_TUNE_CPU"
"""Set to ``1``, a benchmark process runs under ``functional_sgd.tune_cpu()``."""


def tuned_run():
    return os.environ.get(TUNE_CPU_ENV) == "1"


TUNED_METHODS = (BASELINE, "sklearn SGDRegressor", "fit", "jax.vmap(fit)",
                 "jax.jit(jax.vmap(fit))", SCAN, *KERAS, *TORCH_COMPILE, FASTAI)
"""What a run under ``functional_sgd.tune_cpu()`` measures: ``fit`` on the
small workloads it is for, each beside its baseline, the hand-written scan
and the peers of issue 15's targets (Keras runs on JAX, so the setting is
its too; the torch peers run as ever, measured again so every ratio comes
from one process)."""


def methods_for(workload, engines=("jax", "keras", "torch", "sklearn"), *, slow=True):
    """The methods that run ``workload``, in table order (under
    ``FSGD_BENCH_TUNE_CPU=1``, only :data:`TUNED_METHODS` on small workloads);
    ``slow=False`` leaves out the peers that compile for seconds."""
    methods = [m for m in METHODS if m.applies(workload) and m.engine in engines
               and (slow or not m.slow)]
    if tuned_run():
        methods = [m for m in methods if m.name in TUNED_METHODS and not workload.large]
    return methods
