"""The compile-time description of a run: what shapes the program.

A :class:`LoopSpec` holds everything that, when it changes, changes the
compiled program: the loss, the optimizer, which rows each step sees, the
number of steps, the stop rule, what is recorded and the speed plan. It is
frozen and hashable, so it is the loop's one static argument; everything
else (params, data, learning rate, keys, ...) is traced. Adding a flag to
the loop is one field here and one use where it acts.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from ..speed import SpeedPlan
from ._batches import FULL_BATCH
from ._compare import computation_key
from ._model import PLAIN, Model
from ._stop import StopRule


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """What the compiled loop is (see the module docstring).

    Attributes:
      loss: ``loss(params, *batch) -> scalar``.
      optimizer: an optax ``GradientTransformation``, or ``None`` for
        ``p <- p - lr * g``.
      batches: which rows each step sees (``FullBatch``, ``Sampled``,
        ``Shuffled`` or ``Schedule``).
      steps: updates in the run.
      stop: the :class:`~functional_sgd.core.StopRule`.
      record_params: record the params before every step and after the last.
      plan: the :class:`~functional_sgd.speed.SpeedPlan`, resolved (its
        ``exact_moments`` and ``one_pass`` bools).
      model: how params train and the loss is called (a ``Model``: frozen
        leaves, a key, a state, an aux output); ``PLAIN`` for
        ``loss(params, *batch) -> scalar`` with every leaf training.
      evaluation: how held-out data is evaluated inside the loop (an
        :class:`~functional_sgd.core._evaluate.Evaluation`), or ``None``.
      lr_schedule: ``lr(step) -> rate`` for the plain update (``fit(lr=schedule)``):
        step ``t`` (global) uses ``lr_schedule(t)``; ``None`` reads the
        traced ``Inputs.lr``.
    """

    loss: Callable
    optimizer: Any = None
    batches: Any = FULL_BATCH
    steps: int = 1
    stop: StopRule = StopRule()
    record_params: bool = False
    plan: SpeedPlan = SpeedPlan(exact_moments=False, one_pass=False)
    model: Model = PLAIN
    evaluation: Any = None
    lr_schedule: Callable | None = None

    def __hash__(self):  # jit hashes its static argument on every call: computed once
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(self._key())
            object.__setattr__(self, "_hash", cached)
        return cached

    def __eq__(self, other):
        return type(other) is LoopSpec and (self is other or self._key() == other._key())

    def _key(self):
        """The fields, with the functions in them (loss, optimizer, schedule,
        evaluate) compared by what they compute (``_compare``): a fresh
        ``optax.adam(1e-3)`` per call is the same program. Made once, when
        the spec is first compared: a snapshot of the values they close over."""
        cached = self.__dict__.get("_compared")
        if cached is None:
            cached = tuple(computation_key(getattr(self, f.name)) if f.name in _BY_COMPUTATION
                           else getattr(self, f.name) for f in _FIELDS)
            object.__setattr__(self, "_compared", cached)
        return cached

    def part(self, done, steps):
        """The spec of ``steps`` updates of this run from update ``done`` on
        (a chunk, or the rest of a resumed run)."""
        if self.evaluation is None:
            return dataclasses.replace(self, steps=steps)
        return dataclasses.replace(self, steps=steps, evaluation=self.evaluation.part(
            done, at_end=done + steps == self.steps))

    def init_optimizer(self, params):
        """The optimizer's first state: ``optimizer.init`` of the trainable params."""
        return self.optimizer.init(self.model.split(params)[0])


_FIELDS = dataclasses.fields(LoopSpec)
_BY_COMPUTATION = frozenset({"loss", "optimizer", "lr_schedule", "evaluation"})
