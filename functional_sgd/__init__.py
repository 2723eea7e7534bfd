"""functional-sgd: the fast.ai lesson on stochastic gradient descent as pure,
jitted JAX functions.

>>> import jax, jax.numpy as jnp
>>> import functional_sgd as fsgd
>>> x, y = fsgd.lesson_data(jax.random.key(0))
>>> result = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y),
...                   lr=0.1, steps=100, batch_size=10, key=jax.random.key(1))
>>> result.losses.shape
(100,)
"""

from .core import Evaluation as Evaluation
from .core import FitResult as FitResult
from .core import Model as Model
from .core import Run as Run
from .core import Sampled as Sampled
from .core import Schedule as Schedule
from .core import Shuffled as Shuffled
from .core import Stop as Stop
from .core import Trainer as Trainer
from .core import fit as fit
from .core import gradient as gradient
from .core import linear as linear
from .core import linear_mse as linear_mse
from .core import mse as mse
from .core import from_batches as from_batches
from .core import sample_indices as sample_indices
from .core import schedule_from as schedule_from
from .core import sgd_update as sgd_update
from .drivers import stream as stream
from .drivers import Saved as Saved
from .drivers import load as load
from .drivers import save as save
from .lesson import LESSON_A as LESSON_A
from .lesson import LESSON_START as LESSON_START
from .lesson import lesson_data as lesson_data
from .speed import tune_cpu as tune_cpu

__version__ = "0.1.0"

# The lesson, runnable and visible: learning-rate finder and the 3-vs-7 classifier.
from .lesson import LRSweep as LRSweep
from .lesson import binary_cross_entropy as binary_cross_entropy
from .lesson import digits_3_vs_7 as digits_3_vs_7
from .lesson import fit_classifier as fit_classifier
from .lesson import linear_classifier as linear_classifier
from .lesson import load_image_folder as load_image_folder
from .lesson import lr_sweep as lr_sweep
from .lesson import mnist_loss as mnist_loss
