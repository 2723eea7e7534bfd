"""The lesson's runs, as the command line shows them: three modes, the
learning-rate lesson on ``f(x) = x**2`` and on the line, and the torch check."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from functional_sgd import fit, linear_mse, sample_indices
from functional_sgd.lesson import LEARNING_RATES, PARABOLA_START, parabola

from ._progress import progress_bar
from ._timing import timed


class ModeRun(NamedTuple):
    """One mode of the lesson: its fit, its batch size (None for full batch), its timing."""

    result: object
    batch_size: object
    timing: object


def fit_modes(x, y, start, *, lr, steps, batch_size, key, progress):
    """Batch, mini-batch and stochastic descent from ``start``, recording the
    trajectory (the animation's frames); returns ``{name: ModeRun}``."""
    modes = {"batch": None, "mini-batch": batch_size, "stochastic": 1}
    runs = {}
    for name, size in modes.items():
        schedule = {} if size is None else {"batch_size": size, "key": key}
        with progress_bar(steps, enabled=progress, desc=name) as bar, timed() as timing:
            result = fit(linear_mse, start, (x, y), lr=lr, steps=steps, record_params=True,
                         **schedule, **bar)
            jax.block_until_ready(result)
        runs[name] = ModeRun(result, size, timing)
    return runs


def learning_rate_runs(x, y, start, *, steps):
    """Every rate of :data:`LEARNING_RATES` on ``f(x) = x**2`` and on the line
    (full batch); returns ``{label: (parabola_result, line_result)}``."""
    runs = {}
    for label, lr in LEARNING_RATES.items():
        on_parabola = fit(parabola, jnp.array(PARABOLA_START), lr=lr, steps=steps,
                          record_params=True)
        on_line = fit(linear_mse, start, (x, y), lr=lr, steps=steps, record_params=True)
        runs[label] = (on_parabola, on_line)
    return runs


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
