"""Images of 3s and 7s: scikit-learn's bundled 8x8 digits, or a folder of PNGs.

Both give flattened pixels in ``[0, 1]`` and targets ``1.0`` for a 3 and
``0.0`` for a 7, as the lesson labels them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from .._types import Key

DIGITS = ("3", "7")


class Digits(NamedTuple):
    """A training set and a held-out validation set of 3s and 7s.

    Attributes:
      train_x, valid_x: ``(n, pixels)`` float32 pixels in ``[0, 1]``.
      train_y, valid_y: ``(n,)`` float32 targets, 1 for a 3 and 0 for a 7.
      image_shape: ``(height, width)`` of one image.
      source: where the images came from, for messages.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    image_shape: tuple
    source: str


def digits_3_vs_7(key: Key, *, valid_fraction: float = 0.2) -> Digits:
    """The 3s and 7s of scikit-learn's bundled 8x8 digits, split at random.

    Args:
      key: ``jax.random`` key that shuffles the images before the split.
      valid_fraction: share of images held out for validation, in ``(0, 1)``,
        leaving at least one image for training (at most 0.9986 of the 362).

    Returns:
      :class:`Digits` with 8x8 images (64 pixels).

    >>> import jax
    >>> data = digits_3_vs_7(jax.random.key(0))
    >>> data.train_x.shape[1], len(data.train_y) + len(data.valid_y), data.image_shape
    (64, 362, (8, 8))
    """
    from sklearn.datasets import load_digits

    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must lie in (0, 1); got {valid_fraction}.")
    digits = load_digits()
    keep = np.isin(digits.target, (3, 7))
    x = (digits.data[keep] / 16.0).astype(np.float32)  # pixels are 0..16
    y = (digits.target[keep] == 3).astype(np.float32)
    order = np.asarray(jax.random.permutation(key, len(y)))
    n_valid = max(1, round(valid_fraction * len(y)))
    if n_valid >= len(y):
        most = math.floor((len(y) - 0.5) / len(y) * 1e4) / 1e4  # round(most * n) < n
        raise ValueError(
            f"valid_fraction={valid_fraction} holds out all {len(y)} images and leaves none "
            f"for training; it must be at most {most}.")
    valid, train = order[:n_valid], order[n_valid:]
    return Digits(x[train], y[train], x[valid], y[valid], (8, 8),
                  "scikit-learn's 8x8 digits")


def load_image_folder(path: str | os.PathLike[str]) -> Digits:
    """3s and 7s from a folder laid out like fastai's MNIST_SAMPLE.

    ``path/train/3/*.png``, ``path/train/7/*.png``, ``path/valid/3/*.png``
    and ``path/valid/7/*.png``, all grayscale images of one size.

    Args:
      path: the folder.

    Returns:
      :class:`Digits`, with pixels scaled to ``[0, 1]`` at each image's own
      depth: 8-bit images (grayscale, or colour made gray) divided by 255,
      16-bit grayscale ones by 65535.

    Raises:
      ValueError: a missing sub-folder, an empty one, a file that is not an
        image, one larger than Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (a
        decompression bomb), or images of different sizes; the message names
        the path.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder.")
    sets = {}
    for part in ("train", "valid"):
        images, targets = [], []
        for digit in DIGITS:
            folder = root / part / digit
            if not folder.is_dir():
                raise ValueError(
                    f"data folder {str(root)!r} has no {part}/{digit} sub-folder; expected "
                    "train/3, train/7, valid/3 and valid/7 holding PNG images.")
            files = sorted(folder.glob("*.png"))
            if not files:
                raise ValueError(f"{str(folder)!r} holds no .png images.")
            images += [_read_gray(f) for f in files]
            targets += [float(digit == "3")] * len(files)
        sets[part] = (images, np.array(targets, np.float32))
    shapes = {im.shape for images, _ in sets.values() for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images in {str(root)!r} differ in size: {sorted(shapes)}; "
                         "all must have one size.")
    (shape,) = shapes
    (train_images, train_y), (valid_images, valid_y) = sets["train"], sets["valid"]
    flat = lambda images: np.stack(images).reshape(len(images), -1)
    return Digits(flat(train_images), train_y, flat(valid_images), valid_y, shape, str(root))


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
"""Pillow's modes for 16-bit grayscale (how it opens a 16-bit grayscale PNG)."""


def _read_gray(file):
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, then decodes
            # the whole image; a digit that large is no digit: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                return _gray_pixels(image, file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"{str(file)!r} is too large to read safely: {error} If the image is genuine, "
            "raise PIL.Image.MAX_IMAGE_PIXELS.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{str(file)!r} is not a readable image: {error}") from error


def _gray_pixels(image, file):
    """Pixels in ``[0, 1]``, scaled by the image's own depth (``convert("L")``
    would clip 16-bit values at 255: 30000 / 65535 = 0.458 would read as 1)."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        # Older Pillow opens 16-bit grayscale PNGs as 32-bit "I"; a PNG holds at most 16 bits.
        return np.asarray(image, np.float32) / 65535.0
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise ValueError(
            f"{str(file)!r} has {image.mode!r} pixels (32-bit or signed); expected an 8-bit "
            "(grayscale or colour) or 16-bit grayscale image.")
    return np.asarray(image.convert("L"), np.float32) / 255.0
