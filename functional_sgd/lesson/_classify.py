"""The lesson's linear classifier of 3s versus 7s: model, losses, accuracy.

An image ``x`` (flattened pixels) gets the score ``(x * w).sum() + b``; a
positive score means "3" (target 1), a negative one "7" (target 0). Like the
lesson's model and loss, these use operators only, so they run on JAX arrays
and torch tensors alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Key, Tensor
from ..core._loss import row_mean

if TYPE_CHECKING:
    from ._digits import Digits


def linear_classifier(params: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
    """Scores ``(x * w).sum() + b`` for every image, written as ``x @ w + b``.

    Args:
      params: ``(w, b)`` with ``w`` of shape ``(pixels,)`` and ``b`` a scalar.
      x: images of shape ``(n, pixels)``.

    Returns:
      Scores of shape ``(n,)``: positive for a 3, negative for a 7.

    >>> import jax.numpy as jnp
    >>> linear_classifier((jnp.array([1.0, -1.0]), jnp.array(0.5)),
    ...                   jnp.array([[1.0, 0.0], [0.0, 1.0]]))
    Array([ 1.5, -0.5], dtype=float32)
    """
    w, b = params
    if tuple(x.shape[-1:]) != tuple(w.shape) or len(w.shape) != 1 or tuple(b.shape) != ():
        raise ValueError(
            f"linear_classifier: images of shape {tuple(x.shape)} need w of shape "
            f"({x.shape[-1]},) and a scalar b; got w of shape {tuple(w.shape)} and b of "
            f"shape {tuple(b.shape)}.")
    return x @ w + b


def mnist_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """The lesson's ``mnist_loss``: how far ``sigmoid(score)`` is from the target.

    ``p = sigmoid(s)``; ``mean(where(t == 1, 1 - p, p))``. Smooth in the
    weights (unlike accuracy), so its gradient says which way to move.

    Args:
      scores: one score per image.
      targets: 1 for a 3, 0 for a 7, of the shape of ``scores``.

    Returns:
      The mean distance, a scalar in ``[0, 1]``.

    >>> import jax.numpy as jnp
    >>> mnist_loss(jnp.array([0.0, 100.0]), jnp.array([1.0, 0.0]))
    Array(0.75, dtype=float32)
    """
    _check_same_shape(scores, targets, "mnist_loss")
    p = jax.nn.sigmoid(scores)
    return jnp.where(targets == 1, 1 - p, p).mean()


def binary_cross_entropy(scores: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of ``sigmoid(score)`` against 0/1 targets.

    ``mean(-t log p - (1 - t) log(1 - p))`` with ``p = sigmoid(s)``, computed
    as ``mean(softplus(s) - t s)`` so a confident score never takes ``log(0)``.

    Args:
      scores: one score per image.
      targets: 1 or 0, of the shape of ``scores``.

    Returns:
      The mean cross-entropy, a scalar.

    >>> import jax.numpy as jnp
    >>> binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))  # log 2
    Array(0.6931472, dtype=float32)
    """
    _check_same_shape(scores, targets, "binary_cross_entropy")
    return (jax.nn.softplus(scores) - targets * scores).mean()


def accuracy(params: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Share of images whose score falls on the side of their target.

    >>> import jax.numpy as jnp
    >>> params = (jnp.array([1.0, -1.0]), jnp.array(0.0))
    >>> accuracy(params, jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([1.0, 1.0]))
    Array(0.5, dtype=float32)
    """
    predicted_three = linear_classifier(params, x) > 0
    return (predicted_three == (y == 1)).mean(dtype=jnp.result_type(float))


@row_mean("mnist_distance")
def classifier_mnist_loss(params: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """``mnist_loss(linear_classifier(params, x), y)``, as ``fit`` wants it."""
    return mnist_loss(linear_classifier(params, x), y)


@row_mean("logistic_cross_entropy")
def classifier_cross_entropy(params: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """``binary_cross_entropy(linear_classifier(params, x), y)``, as ``fit`` wants it."""
    return binary_cross_entropy(linear_classifier(params, x), y)


LOSSES = {"mnist": classifier_mnist_loss, "cross-entropy": classifier_cross_entropy}
"""The classifier's losses by name: the lesson's ``mnist_loss`` and cross-entropy."""


def init_classifier(key: Key, pixels: int, *, std: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """The lesson's ``init_params``: ``w ~ N(0, std^2)`` per pixel and ``b ~ N(0, std^2)``.

    >>> import jax
    >>> w, b = init_classifier(jax.random.key(0), 64)
    >>> w.shape, b.shape
    ((64,), ())
    """
    key_w, key_b = jax.random.split(key)
    return (std * jax.random.normal(key_w, (pixels,)), std * jax.random.normal(key_b, ()))


def _check_same_shape(scores, targets, name):
    if tuple(scores.shape) != tuple(targets.shape):
        raise ValueError(
            f"{name}: scores have shape {tuple(scores.shape)} but targets have shape "
            f"{tuple(targets.shape)}; they must be equal.")


class EpochReport(NamedTuple):
    """One line of a classifier's training: after ``epoch`` epochs (1-based)."""

    epoch: int
    train_loss: float
    valid_accuracy: float


def valid_accuracy(params: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``{"accuracy": accuracy(params, x, y)}``: what ``fit`` evaluates on held-out images."""
    return {"accuracy": accuracy(params, x, y)}


def fit_classifier(digits: Digits, *, key: Key, loss: str = "mnist", lr: float = 1.0,
                   epochs: int = 20, batch_size: int = 32, init_std: float = 0.1,
                   on_epoch: Callable[[EpochReport], Any] | None = None,
                   patience: int | None = None,
                   keep_best: bool = False) -> tuple[tuple[jax.Array, jax.Array], list[EpochReport]]:
    """Trains :func:`linear_classifier` on ``digits`` by mini-batch SGD.

    Every epoch shows each training image once, in a new random order
    (``fit(..., rows=Shuffled())``), and ends with the validation accuracy,
    measured inside the compiled loop (``fit(evaluation=Evaluation(...))``). Step 7 as
    the lesson puts it, "keep training until the accuracy of the model
    started getting worse": with ``patience``, training stops once the
    validation accuracy has not improved (strictly) for that many epochs.

    Args:
      digits: a :class:`Digits` (see :func:`digits_3_vs_7`).
      key: ``jax.random`` key for the initial weights and the batches.
      loss: ``"mnist"`` (the lesson's ``mnist_loss``) or ``"cross-entropy"``.
      lr: learning rate.
      epochs: passes over the training images (at most).
      batch_size: images per step, at most the number of training images.
      init_std: spread of the initial weights. The lesson's ``std=1`` gives
        scores of several units on 64 pixels, where the sigmoid is flat and
        ``mnist_loss`` barely moves; 0.1 starts where it has a slope.
      on_epoch: called with each :class:`EpochReport` as it comes (the run
        then comes back to the host once an epoch).
      patience: stop after this many epochs without a better validation
        accuracy; ``None`` runs every epoch.
      keep_best: return the weights of the first epoch with the best
        validation accuracy, not the last.

    Returns:
      ``(params, reports)``: the trained ``(w, b)`` and one
      :class:`EpochReport` per epoch run.

    >>> import jax
    >>> from functional_sgd import digits_3_vs_7
    >>> digits = digits_3_vs_7(jax.random.key(0))
    >>> (w, b), reports = fit_classifier(digits, key=jax.random.key(1))
    >>> len(reports), reports[-1].valid_accuracy >= 0.97
    (20, True)
    >>> _, stopped = fit_classifier(digits, key=jax.random.key(1), patience=3)
    >>> len(stopped) < 20
    True
    """
    from ..core import Evaluation, Run, Shuffled, fit
    from ..core._arguments import check_int

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {loss!r}.")
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    n = len(digits.train_y)
    if batch_size > n:
        raise ValueError(f"batch_size must be at most {n} (training images); got {batch_size}.")
    init_key, batch_key = jax.random.split(key)
    params = init_classifier(init_key, digits.train_x.shape[1], std=init_std)
    per_epoch = n // batch_size
    reports: list[EpochReport] = []

    def after_epoch(chunk):
        reports.append(epoch_report(len(reports) + 1, chunk.losses, chunk.evals["accuracy"]))
        on_epoch(reports[-1])

    live = None if on_epoch is None else Run(chunk_size=per_epoch, on_chunk=after_epoch)
    result = fit(LOSSES[loss], params, (digits.train_x, digits.train_y), lr=lr,
                 epochs=epochs, batch_size=batch_size, key=batch_key, rows=Shuffled(),
                 evaluation=Evaluation(valid_accuracy, (digits.valid_x, digits.valid_y),
                                       monitor="accuracy", mode="max", patience=patience,
                                       restore_best=bool(keep_best)),
                 run=live)
    if on_epoch is None:
        losses = np.asarray(result.losses).reshape(epochs, per_epoch)
        assert result.evals is not None  # it evaluated: evaluation= was given
        accuracies = np.asarray(result.evals["accuracy"])
        ran = int(result.steps_run) // per_epoch
        reports = [epoch_report(e + 1, losses[e], accuracies[e:e + 1]) for e in range(ran)]
    return result.params, reports


def epoch_report(epoch, losses, accuracies):
    """The :class:`EpochReport` of an epoch: its mean training loss and the
    last validation accuracy measured in it."""
    accuracies = np.asarray(accuracies)
    return EpochReport(epoch, float(np.nanmean(np.asarray(losses))),
                       float(accuracies[~np.isnan(accuracies)][-1]))
