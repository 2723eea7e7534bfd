"""The seven steps of the lesson, and ``fit`` as their front door.

Each step has a module of its name: ``_initialize``, ``_predict``, ``_loss``,
``_gradient``, ``_step``, ``_repeat``, ``_stop``; which rows each step sees
is ``_batches``; a user's own model (frozen leaves, a key, a state, an aux
output) is ``_model``. The pieces behind ``fit`` work on their own: a
:class:`LoopSpec` (loss, optimizer, batches, steps, stop rule, ...), a
``Carry`` from :func:`initialize`, the traced ``Inputs``, and :func:`run`.
"""

from .._types import Carry as Carry
from .._types import FitResult as FitResult
from .._types import Inputs as Inputs
from .._types import Record as Record
from .._types import StopState as StopState
from ._batches import sample_indices as sample_indices
from ._gradient import gradient as gradient
from ._initialize import initialize as initialize
from ._loss import linear_mse as linear_mse
from ._loss import mse as mse
from ._options import Evaluation as Evaluation
from ._options import Model as Model
from ._options import Run as Run
from ._options import Sampled as Sampled
from ._options import Schedule as Schedule
from ._options import Shuffled as Shuffled
from ._options import Stop as Stop
from ._predict import linear as linear
from ._repeat import run as run
from ._schedules import from_batches as from_batches
from ._schedules import schedule_from as schedule_from
from ._spec import LoopSpec as LoopSpec
from ._step import Stepper as Stepper
from ._step import model_step as model_step
from ._step import sgd_update as sgd_update
from ._step import train_step as train_step
from ._stop import StopRule as StopRule
from ._trainer import Trainer as Trainer
from ._trainer import fit as fit
