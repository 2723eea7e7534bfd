"""The seven steps of the lesson, and ``fit`` as their front door."""

from ._batches import sample_indices as sample_indices
from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._fit import gradient as gradient
from ._fit import sgd_update as sgd_update
from ._model import linear as linear
from ._model import linear_mse as linear_mse
from ._model import mse as mse
