"""The lesson's extras: its data, ``f(x) = x**2`` and its learning rates, the
learning-rate sweep, and the linear classifier of 3s versus 7s.

Built on the core (``fit``), never on the app. Pillow and scikit-learn are
imported when images or digits are read, not before.

>>> import jax, jax.numpy as jnp
>>> import functional_sgd as fsgd
>>> from functional_sgd import lesson
>>> x, y = lesson.lesson_data(jax.random.key(0))
>>> sweep = lesson.lr_sweep(fsgd.linear_mse, jnp.array(lesson.LESSON_START), (x, y),
...                         lrs=jnp.array([0.1, 2.0]), steps=50)
>>> int(sweep.best), int(sweep.edge)
(0, 1)
"""

from ..core._evaluate import HeldOutLoss as HeldOutLoss
from ._classify import EpochReport as EpochReport
from ._classify import accuracy as accuracy
from ._classify import binary_cross_entropy as binary_cross_entropy
from ._classify import classifier_mnist_loss as classifier_mnist_loss
from ._classify import fit_classifier as fit_classifier
from ._classify import init_classifier as init_classifier
from ._classify import linear_classifier as linear_classifier
from ._classify import mnist_loss as mnist_loss
from ._classify import valid_accuracy as valid_accuracy
from ._data import LESSON_A as LESSON_A
from ._data import LESSON_START as LESSON_START
from ._data import lesson_data as lesson_data
from ._digits import Digits as Digits
from ._digits import digits_3_vs_7 as digits_3_vs_7
from ._digits import load_image_folder as load_image_folder
from ._lr_sweep import LRSweep as LRSweep
from ._lr_sweep import lr_sweep as lr_sweep
from ._parabola import LEARNING_RATES as LEARNING_RATES
from ._parabola import PARABOLA_START as PARABOLA_START
from ._parabola import parabola as parabola
