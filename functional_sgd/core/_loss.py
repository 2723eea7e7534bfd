"""Step 3 of the lesson, loss: how wrong the predictions are.

Written with operators only (``-``, ``**``, ``.mean()``), so the same
functions run on JAX arrays, NumPy arrays and torch tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._types import Tensor
from ..drivers import real_rows_sum
from ._predict import linear


_ROW_MEANS: dict[Callable[..., Any], str] = {}
"""The library's losses that are a mean over their data's rows, each with
the name of its row function (``speed/_row_kernel.py``)."""


def row_mean(row: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks one of the library's own losses as a mean over its data's rows
    of a function ``row`` of each row's score, ``L(p) = mean_i l(s_i, y_i)``
    (see ``speed/_row_kernel.py``): the one-pass step (``speed/_one_pass.py``)
    is exact for it, and the row kernel computes it."""
    def mark(loss: Callable[..., Any]) -> Callable[..., Any]:
        _ROW_MEANS[loss] = row
        return loss
    return mark


def row_function(loss: Any) -> str | None:
    """The row function of ``loss`` if it is one of the losses :func:`row_mean`
    marked (``linear_mse``, the lesson classifier's two losses), by identity,
    else ``None``: a user's loss is never guessed, nor one that wraps a marked
    loss (``functools.wraps`` copies attributes, so a mark kept on the function
    would pass to an RMSE built on ``linear_mse``)."""
    try:
        return _ROW_MEANS.get(loss)
    except TypeError:  # a loss that does not hash is none of them
        return None


def mse(y_hat: Tensor, y: Tensor) -> Tensor:
    """Mean squared error ``mean((y_hat - y)**2)`` (step 3 of the lesson).

    The shapes must be equal: ``(n,)`` against ``(n, 1)`` would otherwise
    broadcast to ``(n, n)`` and give a wrong loss without a word.

    Args:
      y_hat: the predictions (a JAX, NumPy or torch array).
      y: the targets, of the shape of ``y_hat``.

    Returns:
      The mean of the squared differences, a scalar.

    >>> import jax.numpy as jnp
    >>> mse(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))
    Array(2., dtype=float32)
    """
    if tuple(y_hat.shape) != tuple(y.shape):
        raise ValueError(
            f"mse: y_hat has shape {tuple(y_hat.shape)} but y has shape "
            f"{tuple(y.shape)}; they must be equal (reshape one of them, e.g. "
            "y.reshape(-1), instead of relying on broadcasting)."
        )
    return ((y_hat - y) ** 2).mean()


@row_mean("squared_error")
def linear_mse(params: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The lesson's objective ``mse(linear(params, x), y)``, as ``fit`` wants it.

    Args:
      params: the weights ``a``, of shape ``(d,)``.
      x: the inputs, ``(n, d)``.
      y: the targets, ``(n,)``.

    Returns:
      ``mean((x @ params - y) ** 2)``, a scalar.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 1.0], [0.5, 1.0]])
    >>> linear_mse(jnp.array([3.0, 2.0]), x, jnp.array([5.0, 3.5]))
    Array(0., dtype=float32)
    """
    return mse(linear(params, x), y)


@dataclasses.dataclass(frozen=True)
class MaskedMean:
    """The loss of a batch that may be short: ``MaskedMean(loss)(params, real, *rows)``.

    A full batch (every slot real) is ``loss(params, *rows)``, as ever; a
    short one (padding slots, ``real`` False) is the mean over its real rows
    ``r``, ``sum_r loss(params, {r}) / count``, each row a batch of one (as
    under a mesh). Both equal ``loss`` on the real rows when ``loss`` is a
    mean over rows, as ``mse`` and cross-entropy are.

    >>> import jax.numpy as jnp
    >>> x, y = jnp.array([[1.0], [2.0], [0.0]]), jnp.array([1.0, 1.0, 9.0])
    >>> short = MaskedMean(linear_mse)(jnp.array([1.0]), jnp.array([True, True, False]), x, y)
    >>> float(short) == float(linear_mse(jnp.array([1.0]), x[:2], y[:2]))
    True
    """

    loss: Callable

    def __call__(self, params, real, *rows):
        def short():
            total = real_rows_sum(self.loss, params, real, rows)
            return total / real.sum(dtype=jnp.int32).astype(total.dtype)

        return jax.lax.cond(real.all(), lambda: self.loss(params, *rows), short)


@dataclasses.dataclass(frozen=True)
class PytreeData:
    """``loss`` fed data that ``fit`` holds as one flat tuple of arrays.

    ``PytreeData(loss, structure)(params, [state,] *leaves)`` calls
    ``loss(params, [state,] *structure.unflatten(leaves))``: the trailing
    ``structure.num_leaves`` arguments are put back into the loss's data
    arguments (a dict, nested tuples), so the loop, the mesh and the host
    reads only ever see a tuple of arrays sharing their leading axis.

    >>> import jax
    >>> structure = jax.tree.structure(({"x": 0, "y": 0},))
    >>> PytreeData(lambda p, d: p * d["x"] + d["y"], structure)(2.0, 3.0, 1.0)
    7.0
    """

    loss: Callable
    structure: Any  # treedef of the tuple of the loss's data arguments

    def __call__(self, *args, **kwargs):
        head = len(args) - self.structure.num_leaves
        return self.loss(*args[:head], *self.structure.unflatten(args[head:]), **kwargs)
