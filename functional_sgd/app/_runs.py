"""The lesson's runs, as the command line shows them: three modes, the
learning-rate lesson on ``f(x) = x**2`` and on the line, and the torch check."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from functional_sgd import Evaluation, Run, Trainer, fit, linear_mse, sample_indices
from functional_sgd.lesson import LEARNING_RATES, PARABOLA_START, lesson_data, lr_sweep, parabola

from ._progress import progress_bar
from ._timing import timed


class ModeRun(NamedTuple):
    """One mode of the lesson: its fit, its batch size (None for full batch), its timing."""

    result: object
    batch_size: object
    timing: object


HELD_OUT = "held-out loss"
"""The name :func:`held_out_loss` gives its value."""


def held_out_loss(a, x, y):
    """``evaluate`` of the held-out rows, named as a progress bar shows it."""
    return {HELD_OUT: linear_mse(a, x, y)}


def held_out_data(data_key, rows):
    """``rows`` more rows of the lesson's line, ``lesson_data(fold_in(data_key, 1), rows)``:
    a key of their own, so the training rows (``lesson_data(data_key, n)``) do not change."""
    return lesson_data(jax.random.fold_in(data_key, 1), rows)


class Lesson(NamedTuple):
    """How the lesson's three descents run."""

    lr: float
    steps: int
    batch_size: int  # mini-batch descent's rows a step
    key: Any  # draws the batches
    eval_every: int | None = None  # held-out evaluations: steps between them


def fit_modes(data, start, lesson, *, progress, held_out=None):
    """Batch, mini-batch and stochastic descent on ``data`` (``(x, y)``)
    from ``start`` as ``lesson`` (a :class:`Lesson`) says, recording the
    trajectory (the animation's frames); returns ``{name: ModeRun}``.

    With ``held_out`` rows, each run also evaluates their loss inside its
    compiled loop (``fit(evaluation=Evaluation(...))``): after every step of batch descent,
    after every ``eval_every`` steps of the others (and after the last)."""
    lr, steps, batch_size, key, eval_every = lesson
    modes = {"batch": None, "mini-batch": batch_size, "stochastic": 1}
    runs = {}
    for name, size in modes.items():
        schedule = {} if size is None else {"batch_size": size, "key": key}
        every = 1 if size is None else eval_every
        evaluation = None if held_out is None else Evaluation(held_out_loss, held_out,
                                                               every=every)
        with progress_bar(steps, enabled=progress, desc=name,  # whole evaluation periods
                          multiple=1 if held_out is None else every or 1) as bar, \
                timed() as timing:
            result = fit(linear_mse, start, data, lr=lr, steps=steps, **schedule,
                         evaluation=evaluation, run=Run(record_params=True, **bar))
            jax.block_until_ready(result)
        runs[name] = ModeRun(result, size, timing)
    return runs


def held_out_curve(eval_steps, losses, start_loss):
    """``(steps, losses)`` of a run's held-out evaluations (``-1`` steps: not
    made), led by ``start_loss`` at step 0: the loss of the params after each
    step count, on the axis where ``result.losses[t]`` (before update ``t``) sits."""
    eval_steps, losses = np.asarray(eval_steps), np.asarray(losses)
    made = eval_steps >= 0
    return (np.concatenate([[0], eval_steps[made]]),
            np.concatenate([[start_loss], losses[made]]))


def held_out_rates(x, y, start, held_out, *, steps):
    """The line's held-out loss after every step, for every rate of
    :data:`LEARNING_RATES` (full batch), from one ``lr_sweep`` call;
    returns ``{label: (steps, losses)}`` as :func:`held_out_curve` does."""
    sweep = lr_sweep(linear_mse, start, (x, y), lrs=jnp.array(list(LEARNING_RATES.values())),
                     steps=steps, evaluation=Evaluation(held_out_loss, held_out, every=1))
    start_loss = float(linear_mse(start, *held_out))
    return {label: held_out_curve(sweep.eval_steps[i], sweep.evals[HELD_OUT][i], start_loss)
            for i, label in enumerate(LEARNING_RATES)}


def learning_rate_runs(x, y, start, *, steps):
    """Every rate of :data:`LEARNING_RATES` on ``f(x) = x**2`` and on the line
    (full batch); returns ``{label: (parabola_result, line_result)}``. One
    :class:`~functional_sgd.Trainer` per objective: each rate after the first
    skips the checks and the compile."""
    recorded = Run(record_params=True)
    on_parabola = Trainer(parabola, steps=steps, run=recorded)
    on_line = Trainer(linear_mse, steps=steps, run=recorded)
    return {label: (on_parabola(jnp.array(PARABOLA_START), lr=lr),
                    on_line(start, (x, y), lr=lr))
            for label, lr in LEARNING_RATES.items()}


def reference_agreement(runs, x, y, start, *, lr, key):
    """Largest difference (see :func:`_max_difference`) between each mode's
    params and losses and the torch reference's on the same batches (drawn
    from ``key``, as :func:`fit_modes` drew them); ``None`` when torch does
    not import."""
    try:
        import reference
    except ImportError:
        return None
    x, y, start = (np.asarray(a) for a in (x, y, start))
    differences = {}
    for name, run in runs.items():
        steps = run.result.losses.shape[0]
        indices = None if run.batch_size is None else np.asarray(
            sample_indices(key, x.shape[0], steps, run.batch_size))
        params, losses = reference.fit(linear_mse, start, (x, y), lr=lr,
                                       steps=None if indices is not None else steps,
                                       indices=indices)
        differences[name] = max(_max_difference(run.result.params, params),
                                _max_difference(run.result.losses, losses))
    return differences


def _max_difference(ours, theirs):
    """``max |ours - theirs| / max(1, |theirs|)``: absolute near the optimum,
    relative on a diverging run whose values reach 1e30."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    both_diverged = ~np.isfinite(ours) & ~np.isfinite(theirs)
    with np.errstate(invalid="ignore"):  # inf - inf, where both diverged
        difference = np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))
    return float(np.max(np.where(both_diverged, 0.0, difference)))
