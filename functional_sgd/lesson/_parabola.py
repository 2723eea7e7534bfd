"""The lesson's first function, ``f(x) = x**2``, and its learning rates."""

from __future__ import annotations

from .._types import Tensor

LEARNING_RATES = {"too low": 0.01, "good": 0.1, "bouncing": 0.9, "too high": 1.5}
"""The learning-rate lesson. ``f(x) = x**2`` and the lesson's line both have
curvature about 2, so ``x <- x - lr * 2x = (1 - 2 lr) x``: 0.01 crawls, 0.1
converges, 0.9 flips sign every step (``1 - 2 lr = -0.8``) yet converges,
and 1.5 doubles the error every step until it overflows."""

PARABOLA_START = 3.0
"""Where ``f(x) = x**2`` starts, as in the lesson's ``grad f(3) = 6``."""


def parabola(x: Tensor) -> Tensor:
    """The lesson's ``f(x) = x**2`` (summed, so ``x`` may be a vector).

    >>> import jax, jax.numpy as jnp
    >>> float(parabola(jnp.array([3.0, 4.0, 10.0]))), float(jax.grad(parabola)(3.0))
    (125.0, 6.0)
    """
    return (x ** 2).sum()
