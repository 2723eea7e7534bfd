"""The command line: ``python -m functional_sgd lesson``."""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._data import LESSON_START, lesson_data
from ._fit import fit
from ._model import linear_mse


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m functional_sgd",
        description="The fast.ai lesson on stochastic gradient descent, in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    lesson = commands.add_parser(
        "lesson", help="fit the lesson's line by batch, mini-batch and stochastic descent")
    lesson.add_argument("--n", type=int, default=100, help="rows of data (default 100)")
    lesson.add_argument("--steps", type=int, default=100, help="updates (default 100)")
    lesson.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    lesson.add_argument("--batch-size", type=int, default=10,
                        help="rows per mini-batch step (default 10)")
    lesson.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _lesson(args):
    data_key, batch_key = jax.random.split(jax.random.key(args.seed))
    x, y = lesson_data(data_key, args.n)
    start = jnp.array(LESSON_START)
    modes = {
        "batch": {},
        "mini-batch": {"batch_size": args.batch_size, "key": batch_key},
        "stochastic": {"batch_size": 1, "key": batch_key},
    }
    for name, kwargs in modes.items():
        began = time.perf_counter()
        result = fit(linear_mse, start, (x, y), lr=args.lr, steps=args.steps, **kwargs)
        losses = np.asarray(result.losses)
        elapsed = time.perf_counter() - began
        print(f"{name} descent, lr={args.lr}, {args.steps} steps")
        for t in range(0, args.steps, 10):
            print(f"  step {t:4d}  loss {losses[t]:.4f}")
        a = np.asarray(result.params)
        print(f"  fitted a = ({a[0]:.3f}, {a[1]:.3f}) in {elapsed * 1e3:.1f} ms "
              "(first call: compile + run)")
        if int(result.diverged_at) >= 0:
            print(f"  diverged at step {int(result.diverged_at)}")
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "lesson":
            return _lesson(args)
    except (TypeError, ValueError) as error:
        print(f"error: {error}")
        return 2
    return 0
