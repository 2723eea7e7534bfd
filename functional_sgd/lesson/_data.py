"""The lesson's data, drawn from an explicit key."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from .._types import Key

LESSON_A = (3.0, 2.0)
"""The true weights of the lesson's line, ``y = 3 x + 2 + noise``."""

LESSON_START = (0.5, 0.75)
"""The lesson's initial guess for ``a`` (one version of it starts at (-1, 1))."""


def lesson_data(key: Key, n: int = 100, *, a: Sequence[float] = LESSON_A,
                dtype: DTypeLike | None = None) -> tuple[jax.Array, jax.Array]:
    """The lesson's regression data: ``x = ones(n, 2)``, ``x[:, 0] ~ U(-1, 1)``,
    ``y = x @ a + U(0, 1)``.

    The uniform noise has mean 0.5, so the best fit is near ``(3, 2.5)``.

    Args:
      key: a ``jax.random`` key.
      n: number of rows.
      a: the true weights, one per column of ``x``; columns after the first
        are ones (the intercept) when ``len(a) == 2``, uniform otherwise.
      dtype: float dtype of the arrays (default: JAX's default float).

    Returns:
      ``(x, y)`` of shapes ``(n, len(a))`` and ``(n,)``.

    >>> import jax
    >>> x, y = lesson_data(jax.random.key(0))
    >>> x.shape, y.shape, bool((x[:, 1] == 1).all())
    ((100, 2), (100,), True)
    """
    from ..core._arguments import check_int, check_key
    check_key(key, "key")
    n = check_int(n, "n", minimum=1)
    weights = jnp.asarray(a, jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        raise TypeError(f"dtype must be a float dtype; got {weights.dtype}.")
    if weights.ndim != 1 or weights.shape[0] < 1:
        raise ValueError(f"a must be a 1-D sequence of weights; got shape {weights.shape}.")
    key_x, key_noise = jax.random.split(key)
    d = weights.shape[0]
    x = jax.random.uniform(key_x, (n, d), weights.dtype, -1.0, 1.0)
    if d == 2:
        x = x.at[:, 1].set(1.0)
    y = x @ weights + jax.random.uniform(key_noise, (n,), weights.dtype)
    return x, y
