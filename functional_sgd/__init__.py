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

from ._data import LESSON_A as LESSON_A
from ._data import LESSON_START as LESSON_START
from ._data import lesson_data as lesson_data
from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._fit import gradient as gradient
from ._fit import sgd_update as sgd_update
from ._model import linear as linear
from ._model import linear_mse as linear_mse
from ._model import mse as mse
from ._sampling import sample_indices as sample_indices

__version__ = "0.1.0"
