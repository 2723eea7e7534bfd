"""``python -m reference``: how closely ``functional_sgd.fit`` agrees with the
torch reference on the lesson, per mode and dtype, on the same schedule."""

import argparse

import jax
import numpy as np

import functional_sgd as fsgd
import reference

MODES = {"batch": None, "mini-batch": 10, "stochastic": 1}


def agreement(dtype, batch_size, steps, lr, seed=0):
    """Largest differences (relative and absolute) of params and losses."""
    data_key, schedule_key = jax.random.split(jax.random.key(seed))
    x, y = (np.asarray(a) for a in fsgd.lesson_data(data_key, dtype=dtype))
    start = np.asarray(fsgd.LESSON_START, dtype)
    indices = None if batch_size is None else np.asarray(
        fsgd.sample_indices(schedule_key, x.shape[0], steps, batch_size))
    ours = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=steps, indices=indices)
    params, losses = reference.fit(fsgd.linear_mse, start, (x, y), lr=lr, steps=steps,
                                   indices=indices)
    rows = {}
    for name, a, b in (("params", ours.params, params), ("losses", ours.losses, losses)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rows[name] = (np.max(np.abs(a - b) / np.abs(b)), np.max(np.abs(a - b)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reference", description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args(argv)
    print(f"functional_sgd.fit vs reference.fit, lesson data, {args.steps} steps, "
          f"lr={args.lr}")
    print(f"{'dtype':8} {'mode':11} {'params rel':>11} {'params abs':>11} "
          f"{'losses rel':>11} {'losses abs':>11}")
    for dtype in ("float64", "float32"):
        with jax.enable_x64(dtype == "float64"):
            for mode, batch_size in MODES.items():
                rows = agreement(np.dtype(dtype), batch_size, args.steps, args.lr)
                print(f"{dtype:8} {mode:11} {rows['params'][0]:11.2e} {rows['params'][1]:11.2e}"
                      f" {rows['losses'][0]:11.2e} {rows['losses'][1]:11.2e}")


if __name__ == "__main__":
    main()
