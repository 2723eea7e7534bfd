"""A spec read against its data: the values the run needs, resolved once.

:func:`resolve` turns a :class:`~functional_sgd.core._options.Spec` (the
option values as the user gave them) and the call's data into a
:class:`Resolved`: the number of steps (``epochs`` counted in steps), the
held-out :class:`~functional_sgd.core._options.Evaluation` as the loop calls
it (its data a flat tuple of arrays, ``every`` in steps), the model's parts
and the run's options (their defaults where none was given), and the arrays
the loop reads from the options (a schedule's rows, the stop rule's ``tol``
and ``patience``). Combinations that cannot run are refused here, for
arrays and streams alike.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import jax

from .. import drivers
from ..drivers import TRAIN
from . import _arguments, _batches
from ._evaluate import HeldOutLoss
from ._trace import as_dict
from ._options import Evaluation, Model, Run, Sampled, Schedule, Shuffled

if TYPE_CHECKING:
    from ._options import Spec

DEFAULT_MODEL = Model()
DEFAULT_RUN = Run()


class Traced(NamedTuple):
    """The arrays a run reads from the option values (traced: new values compile nothing)."""

    indices: Any  # a Schedule's rows, or None
    tol: Any  # the stop rule's (Stop's, or with monitor Evaluation's)
    patience: Any
    eval_data: tuple[Any, ...]  # the held-out arrays, flattened


NOTHING_TRACED = Traced(None, None, None, ())
"""What a spec without rows, stop or evaluation reads: nothing."""


class Resolved(NamedTuple):
    """What a spec asks for of this data (see the module docstring)."""

    steps: int | None  # updates; None: a schedule's or a stream's own length
    evaluation: Evaluation | None  # evaluate as the loop calls it, data flat, every in steps
    model: Model  # the model's parts (Model() when none was given)
    run: Run  # how the run is cut and kept (Run() when none was given)
    traced: Traced


def traced(spec: Spec) -> Traced:
    """The arrays a warm call reads from the options."""
    rows, stop, evaluation = spec.rows, spec.stop, spec.evaluation
    if rows is None and stop is None and evaluation is None:  # the lesson's warm call
        return NOTHING_TRACED
    indices = rows.indices if isinstance(rows, Schedule) else None
    rule = evaluation if evaluation is not None and evaluation.monitor is not None else stop
    tol = None if rule is None else rule.tol
    patience = None if rule is None else rule.patience
    eval_data = () if evaluation is None else held_out(evaluation.data)[1]
    return Traced(indices, tol, patience, eval_data)


def resolve(spec: Spec, data: Any) -> Resolved:
    """The run ``spec`` asks for on ``data``, each combination checked."""
    rows, stop, evaluation = spec.rows, spec.stop, spec.evaluation
    model = spec.model or DEFAULT_MODEL
    if isinstance(rows, (Sampled, Shuffled)) and spec.batch_size is None \
            and not isinstance(data, drivers.Stream):  # a stream refuses rows itself
        raise ValueError(f"rows={rows!r} needs batch_size (and key): without it every step "
                         "sees all rows.")
    arrays = traced(spec)
    if stop is not None and evaluation is not None and evaluation.monitor is not None:
        raise ValueError("stop= watches the training loss and evaluation's monitor watches "
                         "held-out data; one rule at a time: give tol/patience to "
                         "fsgd.Evaluation(monitor=..., patience=..., tol=...), or drop monitor.")
    steps = spec.steps
    per_epoch = 1
    by_epoch = spec.epochs is not None or (evaluation is not None and (
        evaluation.every == "epoch" or (evaluation.every is None and isinstance(rows, Shuffled))))
    if by_epoch:
        per_epoch = _steps_per_epoch(spec, data)
        start = 0 if spec.run is None else spec.run.start_step
        if _arguments.is_concrete(start) and int(start) % per_epoch:
            raise ValueError(f"this run starts at step {int(start)}, in the middle of an epoch "
                             f"of {per_epoch} steps, but counts epochs (epochs=, or evaluations "
                             "every epoch) from its first step: continue from an epoch "
                             "boundary, or give steps= and Evaluation(every=...) in steps.")
    if spec.epochs is not None:
        if steps is not None:
            raise ValueError(f"give steps= or epochs=, not both; got steps={steps} and "
                             f"epochs={spec.epochs}.")
        steps = _arguments.check_int(spec.epochs, "epochs", minimum=1,
                                  maximum=_arguments.MAX_STEP // per_epoch) * per_epoch
    if evaluation is not None:
        evaluate = evaluation.evaluate
        if evaluate is None:
            if not model_is_plain(model):
                raise ValueError("Evaluation(evaluate=None) evaluates loss(params, *data), "
                                 "which a model with rng, state or has_aux does not give: "
                                 "pass evaluate=fn returning a dict.")
            evaluate = HeldOutLoss(spec.loss)
        evaluation = dataclasses.replace(
            evaluation, evaluate=held_out(evaluation.data, evaluate)[0],
            data=arrays.eval_data,
            every=per_epoch if evaluation.every == "epoch" else evaluation.every)
    return Resolved(steps, evaluation, model, spec.run or DEFAULT_RUN, arrays)


def held_out(data: Any, evaluate: Any = None) -> tuple[Any, tuple[Any, ...]]:
    """``(evaluate, leaves)``: ``Evaluation.data`` as the loop takes it, a
    flat tuple of arrays, and ``evaluate`` called on it as its user wrote it.

    * a tuple of arrays: unpacked into ``evaluate(params, *data)``, as it is;
    * a dict whose values are all tuples (or lists): named held-out sets,
      each evaluated alone and its keys prefixed by its name (``"valid/accuracy"``);
    * any other pytree (a dict of arrays, a tuple of dicts): one argument
      (a tuple: its items as arguments), flattened for the loop and rebuilt
      for ``evaluate``.
    """
    if isinstance(data, (tuple, list)) and all(_is_array(a) for a in data):
        return evaluate, tuple(data)
    if isinstance(data, dict) and data and all(isinstance(v, (tuple, list))
                                               for v in data.values()):
        if TRAIN.rstrip("/") in data:
            raise ValueError(f"a held-out set may not be named {TRAIN.rstrip('/')!r}: "
                             f"keys starting with {TRAIN!r} hold the training means.")
        sets, leaves = [], []
        for name, part in data.items():
            if not isinstance(name, str):
                raise TypeError(f"held-out sets are named by str keys; got {name!r}.")
            part_leaves, treedef = jax.tree_util.tree_flatten(tuple(part))
            sets.append((name, treedef, len(part_leaves)))
            leaves.extend(part_leaves)
        return NamedSets(evaluate, tuple(sets)), tuple(leaves)
    leaves, treedef = jax.tree_util.tree_flatten(data)
    return PytreeHeldOut(evaluate, treedef, len(leaves), isinstance(data, (tuple, list))), \
        tuple(leaves)


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _rebuilt(args: tuple[Any, ...], treedef: Any, count: int, unpack: bool,
             evaluate: Any) -> Any:
    """``evaluate`` on the arguments before the last ``count`` (params, a
    state), then the held-out pytree rebuilt from those ``count`` leaves."""
    head, leaves = args[:len(args) - count], args[len(args) - count:]
    data = jax.tree_util.tree_unflatten(treedef, leaves)
    return evaluate(*head, *data) if unpack else evaluate(*head, data)


@dataclasses.dataclass(frozen=True)
class PytreeHeldOut:
    """``evaluate`` of held-out data given as a pytree (flattened for the loop)."""

    evaluate: Callable[..., Any]
    treedef: Any
    count: int
    unpack: bool

    def __call__(self, *args: Any) -> Any:
        return _rebuilt(args, self.treedef, self.count, self.unpack, self.evaluate)


@dataclasses.dataclass(frozen=True)
class NamedSets:
    """``evaluate`` of each named held-out set, its keys prefixed by the set's
    name (a bare scalar is its ``"name/loss"``)."""

    evaluate: Callable[..., Any]
    sets: tuple[tuple[str, Any, int], ...]

    @property
    def groups(self) -> tuple[int, ...]:
        """The leaves of each set: each set shares a row count of its own."""
        return tuple(count for _, _, count in self.sets)

    def __call__(self, *args: Any) -> dict[str, Any]:
        total = sum(self.groups)
        head, leaves = args[:len(args) - total], args[len(args) - total:]
        out, first = {}, 0
        for name, treedef, count in self.sets:
            values = as_dict(_rebuilt((*head, *leaves[first:first + count]), treedef, count,
                                      True, self.evaluate))
            if isinstance(values, Mapping):
                values = {f"{name}/{key}": value for key, value in values.items()}
            out.update(values)
            first += count
        return out


def model_is_plain(model: Model) -> bool:
    return model.rng is None and model.state is None and not model.has_aux


def _steps_per_epoch(spec: Spec, data: Any) -> int:
    """Steps in one pass over ``data`` with ``spec``'s rows."""
    if isinstance(data, drivers.Stream):
        raise ValueError("epochs (and Evaluation(every='epoch')) need data of known length; "
                         "a stream has none: give steps, or let the stream end the run.")
    if isinstance(spec.rows, Schedule):
        raise ValueError("epochs (and Evaluation(every='epoch')) with a Schedule: the "
                         "schedule's rows give the steps; drop epochs.")
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves or not hasattr(leaves[0], "shape") or not leaves[0].shape:
        raise ValueError("epochs (and Evaluation(every='epoch')) need data with rows; "
                         "give steps for a data-free objective.")
    n = int(leaves[0].shape[0])
    if spec.batch_size is None:
        return 1
    batch_size: int = _arguments.check_int(spec.batch_size, "batch_size", minimum=1, maximum=n)
    if isinstance(spec.rows, Shuffled):
        return spec.rows.steps_per_epoch(n, batch_size)
    return int(_batches.steps_per_epoch(n, batch_size, drop_last=False))  # independent draws
