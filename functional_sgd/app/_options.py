"""The command line's option types: each refuses a value outside its range
with a message that names the range, before anything runs.

>>> int_in(1, 10)("3"), learning_rate("0.1"), fraction("0.2"), share("1")
(3, 0.1, 0.2, 1.0)
"""

import argparse
import math

INT32_MAX = 2 ** 31 - 1
"""Rows, steps and batch sizes index int32 arrays (JAX's default integers)."""

SEED_LIMIT = 2 ** 32
"""``jax.random.key`` keeps 32 bits of a seed: 2**32 would give seed 0's key."""

LR_RANGE = (1e-30, 1e30)
"""Learning rates float32 holds, with their logarithms (``lr-sweep`` spaces
rates on a log scale): 1e39 would be inf and 1e-50 zero in float32."""

MAX_RATES = 10_000
"""``lr-sweep --num``: every rate is a whole training run, all in one call."""


def int_in(minimum, maximum):
    """A whole number in ``[minimum, maximum]``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}; got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(
                f"must lie in [{minimum}, {maximum}]; got {value}")
        return value
    return parse


def positive_float(text):
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return value


def learning_rate(text):
    """A number > 0 in :data:`LR_RANGE`."""
    value = positive_float(text)
    low, high = LR_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must lie in [{low:g}, {high:g}]; got {text}")
    return value


def fraction(text):
    """A number strictly between 0 and 1."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1; got {text}")
    return value


def share(text):
    """A number in (0, 1]: 1 is as many as there are."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1]; got {text}")
    return value
