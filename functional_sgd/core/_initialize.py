"""Step 1 of the lesson, initialize: the state the first step starts from.

The caller gives the initial parameters; the optimizer's state starts from
``optimizer.init(params)`` (inside the compiled loop, so a call pays no
extra dispatch), or continues from a given ``opt_state``; the step counter
starts at ``start_step``; the stop rule starts with no best loss (or
monitored value); a model's state (``fit(model=Model(state=...))``) starts as given,
and so do the best params so far (``restore_best``).
"""

import numpy as np

from .._types import Carry


def initialize(spec, params, opt_state, start_step, loss_dtype, state=None):
    """The :class:`~functional_sgd._types.Carry` before the first step.

    ``opt_state`` may stay ``None`` with an optimizer: :func:`optimizer_state`
    fills it in inside the loop. A concrete ``start_step`` becomes an int32
    scalar, so a first call and a continuation (a device int32) share one
    compile.

    >>> import numpy as np
    >>> from functional_sgd.core import LoopSpec, StopRule
    >>> from functional_sgd.core._batches import FullBatch
    >>> spec = LoopSpec(loss=None, optimizer=None, batches=FullBatch(), steps=10)
    >>> initialize(spec, np.zeros(2), None, 0, np.float32).step
    np.int32(0)
    """
    if isinstance(start_step, (int, np.integer)):
        start_step = np.int32(start_step)
    return Carry(params, opt_state, start_step, spec.stop.init(loss_dtype), state,
                 best_start(spec, params, state))


def best_start(spec, params, state):
    """The best params (and state) so far before the first evaluation: the
    start's, with ``restore_best``; ``None`` without it."""
    evaluation = spec.evaluation
    return (params, state) if evaluation is not None and evaluation.restore_best else None


def optimizer_state(optimizer, params, opt_state):
    """``opt_state``, or ``optimizer.init(params)`` when there is none yet
    (``params``: the trainable ones, see ``Model.split``)."""
    if optimizer is not None and opt_state is None:
        return optimizer.init(params)
    return opt_state
