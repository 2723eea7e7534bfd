"""``python -m functional_sgd agreement``: how closely ``functional_sgd.fit``
agrees with the torch reference on the lesson, per mode and dtype, on the
same schedule."""

import jax
import numpy as np

import functional_sgd as fsgd

MODES = {"batch": None, "mini-batch": 10, "stochastic": 1}
DTYPES = ("float64", "float32")
COLUMNS = ("dtype", "mode", "params rel", "params abs", "losses rel", "losses abs")


def agreement(reference, dtype, batch_size, steps, lr, seed=0):
    """Largest differences (relative and absolute) of params and losses,
    ``{"params": (rel, abs), "losses": (rel, abs)}``, between ``fsgd.fit``
    and ``reference.fit`` on the lesson's data and the same batches."""
    data_key, batch_key = jax.random.split(jax.random.key(seed))  # as every command
    x, y = (np.asarray(a) for a in fsgd.lesson_data(data_key, dtype=dtype))
    start = np.asarray(fsgd.LESSON_START, dtype)
    indices = None if batch_size is None else np.asarray(
        fsgd.sample_indices(batch_key, x.shape[0], steps, batch_size))
    ours = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=steps,
                    rows=None if indices is None else fsgd.Schedule(indices))
    params, losses = reference.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=steps,
                                   indices=indices)
    rows = {}
    for name, a, b in (("params", ours.params, params), ("losses", ours.losses, losses)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero in torch's values
            rows[name] = (np.max(np.abs(a - b) / np.abs(b)), np.max(np.abs(a - b)))
    return rows


def print_table(reference, *, steps, lr, seed=0):
    """Prints one row per dtype and mode, under a title and the column names."""
    print(f"functional_sgd.fit vs reference.fit, lesson data, {steps} steps, lr={lr}, "
          f"seed={seed}")
    print(f"{COLUMNS[0]:8} {COLUMNS[1]:11} " + " ".join(f"{c:>11}" for c in COLUMNS[2:]))
    for dtype in DTYPES:
        with jax.enable_x64(dtype == "float64"):
            for mode, batch_size in MODES.items():
                rows = agreement(reference, np.dtype(dtype), batch_size, steps, lr, seed)
                print(f"{dtype:8} {mode:11} {rows['params'][0]:11.2e} {rows['params'][1]:11.2e}"
                      f" {rows['losses'][0]:11.2e} {rows['losses'][1]:11.2e}")
