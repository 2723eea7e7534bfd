"""Options as values: the few frozen, typed objects that say how ``fit`` runs.

The lesson's calls need none of them (``fit(loss, params, (x, y), lr=0.1,
steps=100)``, with ``batch_size=`` and ``key=`` for mini-batches). Everything
else is one value per concern, checked when it is built:

* which rows each step sees: :class:`Sampled`, :class:`Shuffled`, :class:`Schedule`;
* the stop rule on the training loss: :class:`Stop`;
* held-out evaluation and the stop rule it drives: :class:`Evaluation`;
* the model's parts beyond its params: :class:`Model`;
* how the run is cut, kept and continued: :class:`Run`.

Each value splits into what shapes the compiled program and the arrays it
carries (traced: a new learning rate, held-out set, key or state reuses the
compiled loop). Values are frozen, and each works out its part of a
remembered call's key when it is built (``_keys``): build a new value
(``dataclasses.replace``) rather than force a field of an old one.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
from typing import Any, Callable, Literal, Mapping, NamedTuple, Union

import numpy as np

from ..speed import SpeedPlan
from . import _arguments, _batches, _keys

__all__ = ["Evaluation", "Model", "Run", "Sampled", "Schedule", "Shuffled", "Stop"]


def _check_flag(value: object, name: str) -> bool:
    """A real bool (Python's or NumPy's), never a truthy stand-in such as ``"no"``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} of type "
                        f"{type(value).__name__}.")
    return bool(value)


def _check_count(value: object, name: str, *, minimum: int = 1) -> int | Any:
    """A Python or NumPy int ``>= minimum``, or a 0-d integer array; tracers pass."""
    if not _arguments.is_concrete(value):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int; got {value!r}.")
    if not isinstance(value, numbers.Integral):
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if shape != () or dtype is None or not np.issubdtype(np.dtype(dtype), np.integer):
            raise TypeError(f"{name} must be an int; got {value!r} of type "
                            f"{type(value).__name__}.")
        value = int(value)  # type: ignore[call-overload]  # a 0-d integer array (jnp.int32(3))
    return _arguments.check_int(value, name, minimum=minimum)


@dataclasses.dataclass(frozen=True)
@_keys.keyed
class Sampled:
    """Every step draws its ``batch_size`` rows independently and uniformly,
    with replacement across steps (the lesson's ``rand_idx``). The default
    when ``fit`` gets ``batch_size`` and ``key``.

    >>> import jax, jax.numpy as jnp, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> r = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100,
    ...              batch_size=10, key=jax.random.key(1), rows=fsgd.Sampled())
    >>> r.losses.shape
    (100,)
    """



@dataclasses.dataclass(frozen=True)
@_keys.keyed
class Shuffled:
    """Epochs of shuffled rows: within an epoch no row repeats.

    Attributes:
      drop_last: ``True`` cuts each epoch into ``n // batch_size`` full
        batches (the ``n % batch_size`` rows left over sit that epoch out);
        ``False`` gives each epoch ``ceil(n / batch_size)`` steps, the last
        one holding the rows left over, as torch's
        ``DataLoader(shuffle=True, drop_last=False)`` does. A short step's
        loss is the mean over its real rows, each row a batch of one: equal
        to the loss on those rows when the loss is a mean over the rows of
        its batch (``mse``, cross-entropy).

    >>> import jax, jax.numpy as jnp, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> r = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, epochs=3,
    ...              batch_size=30, key=jax.random.key(1), rows=fsgd.Shuffled(drop_last=False))
    >>> r.losses.shape  # 3 epochs of ceil(100 / 30) = 4 steps
    (12,)
    """

    drop_last: bool = True

    def __post_init__(self) -> None:
        _check_flag(self.drop_last, "drop_last")


    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        return _batches.steps_per_epoch(n, batch_size, self.drop_last)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True, eq=False)
@_keys.keyed
class Schedule:
    """An explicit schedule: step ``t`` sees rows ``indices[t]``.

    Attributes:
      indices: integer array ``(steps, batch_size)`` of rows in ``[0, n)``
        (NumPy or JAX; traced under ``jax.jit``). It replays any order, such
        as the one a torch loader used, so the reference can see the same
        batches.
      padded: ``True`` lets a slot hold ``-1``, padding (a short batch:
        its loss is the mean over its real rows, as with
        ``Shuffled(drop_last=False)``); every step needs one real row.

    >>> import jax, jax.numpy as jnp, numpy as np, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> rows = fsgd.Schedule(np.arange(100).reshape(10, 10))
    >>> fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1,
    ...          rows=rows).losses.shape
    (10,)
    """

    indices: Any
    padded: bool = False

    def __post_init__(self) -> None:
        _check_flag(self.padded, "padded")
        shape, dtype = getattr(self.indices, "shape", None), getattr(self.indices, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(f"indices must be an integer array (steps, batch_size); got "
                            f"{type(self.indices).__name__}.")
        if not _is_integer_dtype(dtype):
            raise TypeError(f"indices must be an integer array; got dtype {dtype}.")
        if len(shape) != 2:
            raise ValueError(f"indices must have shape (steps, batch_size); got shape "
                             f"{tuple(shape)}.")



@functools.lru_cache(maxsize=64)
def _is_integer_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is an integer dtype (not bool); cached: a warm call builds a Schedule."""
    return bool(np.issubdtype(np.dtype(dtype), np.integer)) and np.dtype(dtype) != np.bool_


Rows = Union[Sampled, Shuffled, Schedule]
"""Which rows each step sees; ``None`` (with no ``batch_size``) is full-batch descent."""


@dataclasses.dataclass(frozen=True, eq=False)
@_keys.keyed
class Stop:
    """Step 7 on the training loss: stop before ``steps`` run out.

    A non-finite loss also stops a run that has a stop rule (without one,
    the run goes on and ``result.diverged_at`` says where it broke).

    Attributes:
      tol: stop once a step's loss is ``<= tol``.
      patience: stop once the best loss has not improved (strictly) for
        this many steps.

    Both are traced: a new value compiles nothing, and ``jax.vmap`` sweeps them.

    >>> import jax, jax.numpy as jnp, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> r = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=1000,
    ...              stop=fsgd.Stop(tol=0.1))
    >>> int(r.steps_run) < 1000
    True
    """

    tol: Any = None
    patience: Any = None

    def __post_init__(self) -> None:
        if self.tol is None and self.patience is None:
            raise ValueError("Stop needs tol= or patience= (or both).")
        if self.tol is not None and _arguments.is_concrete(self.tol):
            _arguments.check_real(self.tol, "tol")
        if self.patience is not None:
            _check_count(self.patience, "patience")



def _check_eval_every(every: object) -> Any:
    """``every`` as given (an int, ``None`` or ``"epoch"``), or a list of
    steps as a tuple of ints, sorted and unique."""
    if every is None or (isinstance(every, str) and every == "epoch"):
        return every
    if isinstance(every, (list, tuple)) or (hasattr(every, "shape") and len(every.shape) == 1):
        steps = tuple(_check_count(s, f"every[{i}]")
                      for i, s in enumerate(list(every)))  # type: ignore[call-overload]
        if not steps:
            raise ValueError("every as a list of steps needs at least one step; got [].")
        for before, after in zip(steps, steps[1:]):  # noqa: RUF007 (pairwise: 3.10+ only)
            if after <= before:
                why = "unique" if after == before else "sorted"
                raise ValueError(f"every's steps must be {why} (strictly increasing); got "
                                 f"{list(steps)}.")
        return steps
    return _check_count(every, "every")


@dataclasses.dataclass(frozen=True, eq=False)
@_keys.keyed
class Evaluation:
    """Held-out evaluation inside the compiled loop, and the stop rule it drives.

    ``evaluate(params, *data)`` (with a model state: ``evaluate(params,
    state, *data)``) returns a dict of arrays (or one scalar: ``"loss"``). It runs after every
    ``every``-th update and after the last one; ``result.evals`` holds each
    value stacked over the evaluations and ``result.eval_steps`` the update
    count after each.

    With ``monitor``, it is also step 7 (as Keras's ``EarlyStopping``):
    ``patience`` counts evaluations without a strict improvement of
    ``evals[monitor]`` (a tie does not improve) and stops the run when it
    reaches ``patience``; ``tol`` stops it once the value is at least as
    good as ``tol``; ``restore_best`` returns the params (and state) of the
    first best evaluation. A run whose evaluations are all NaN, or that
    stopped before its first, keeps its last params (with a warning).

    Attributes:
      evaluate: ``evaluate(params, *data) -> dict`` of arrays (scalars or
        not), or a bare scalar named ``"loss"``; ``None`` evaluates the
        training loss on ``data`` as ``{"loss": ...}``.
      data: the held-out arrays, with a row count of their own: a tuple
        sharing their leading axis (unpacked), any other pytree (one
        argument), or a dict of tuples (named sets; see below). Traced:
        new held-out data of the same shapes compiles nothing. NumPy, JAX and CPU torch
        arrays are accepted.
      every: updates between evaluations; ``None`` is one epoch with
        :class:`Shuffled` rows, else the end of the run only; ``"epoch"``
        insists on epochs; a list of steps (``[10, 25, 100]``: sorted,
        unique, each ``>= 1`` and within the run) evaluates after exactly
        those updates, and after the last one. Held as a tuple. Steps
        and epochs count from this call's first update (``eval_steps``
        are global: with ``Run(start_step=s)``, listed step ``k`` is
        reported as ``s + k``).
      monitor: the key of ``evaluate``'s dict that the stop rule watches.
      mode: ``"min"`` or ``"max"``: which way ``monitor`` improves.
      patience: evaluations without improvement before the run stops.
      tol: stop once ``monitor`` is this good (``<=`` with ``"min"``).
      restore_best: return the params of the best evaluation.
      on_evaluation: ``on_evaluation(step, evals)``, called on the host
        after each evaluation with the update count and that evaluation's
        dict (the period's training means included); returning a true
        boolean scalar (Python, NumPy or a 0-d JAX bool) stops the run
        there. The run is then cut at evaluation boundaries: each period is
        one call of one compiled program (a shorter last period one more).

    >>> import jax, jax.numpy as jnp, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> held_out = fsgd.lesson_data(jax.random.key(1))
    >>> check = fsgd.Evaluation(lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)},
    ...                         held_out, every=25)
    >>> r = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100,
    ...              evaluation=check)
    >>> r.eval_steps.tolist()
    [25, 50, 75, 100]

    Each evaluation also records its period's training means: ``evals``
    keys that start with ``"train/"`` (``"train/loss"``, and with
    ``Model(has_aux=True)`` ``"train/<key>"`` for each scalar of the aux),
    a prefix ``evaluate``'s own keys may not use. Steps may be listed, and a
    hook sees each evaluation on the host:

    >>> seen = []
    >>> check = fsgd.Evaluation(lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}, held_out,
    ...                         every=[10, 25], monitor="mse",
    ...                         on_evaluation=lambda step, evals: seen.append(step))
    >>> r = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100,
    ...              evaluation=check)
    >>> r.eval_steps.tolist(), seen, sorted(r.evals), int(r.best_step)
    ([10, 25, 100], [10, 25, 100], ['mse', 'train/loss'], 100)

    ``data`` is held as users have it: a tuple of arrays is unpacked into
    ``evaluate``'s arguments; any other pytree (a dict) is passed as one
    argument; a dict whose values are all tuples names several held-out
    sets, each with rows of its own, evaluated alone, their keys prefixed
    ``"name/"``. A bare scalar from ``evaluate`` is named ``"loss"``;
    a metric may be an array (per-class errors), stacked over evaluations:

    >>> test = fsgd.lesson_data(jax.random.key(2), 20)
    >>> check = fsgd.Evaluation(fsgd.linear_mse, {"valid": held_out, "test": test}, every=50)
    >>> r = fsgd.fit(fsgd.linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100,
    ...              evaluation=check)
    >>> sorted(r.evals), r.evals["test/loss"].shape
    (['test/loss', 'train/loss', 'valid/loss'], (2,))

    With a :func:`~functional_sgd.stream` as data, each block's compiled
    call evaluates at the periods counted from the stream's start; a stream
    of unknown length needs ``every`` and evaluates its end only when that
    ends a period.
    """

    evaluate: Callable[..., Mapping[str, Any]] | None = None
    data: Any = ()
    every: Any = None
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    patience: Any = None
    tol: Any = None
    restore_best: bool = False
    on_evaluation: Callable[[int, Mapping[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if hasattr(self.data, "shape"):  # one array: ambiguous (its rows, or one argument?)
            raise TypeError("Evaluation's data must be a tuple of arrays, unpacked into "
                            "evaluate's arguments, e.g. (valid_x, valid_y), or another pytree "
                            f"of them; got one {type(self.data).__name__}. Wrap a single "
                            "array as (x,).")
        if self.evaluate is None:
            if isinstance(self.data, (tuple, list)) and len(self.data) == 0:
                raise ValueError("Evaluation needs evaluate= or data= (with data alone, the "
                                 "training loss is evaluated on it as {'loss': ...}).")
        elif not callable(self.evaluate):
            raise TypeError(f"evaluate must be callable as evaluate(params, *data)"
                            f" -> dict; got {self.evaluate!r}.")
        object.__setattr__(self, "every", _check_eval_every(self.every))
        if self.on_evaluation is not None and not callable(self.on_evaluation):
            raise TypeError(f"on_evaluation must be callable as on_evaluation(step, evals); "
                            f"got {self.on_evaluation!r}.")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'; got {self.mode!r}.")
        _check_flag(self.restore_best, "restore_best")
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise TypeError(f"monitor must be a key of evaluate's dict (a str); "
                            f"got {self.monitor!r}.")
        needs_monitor = [name for name, given in (
            ("patience", self.patience is not None), ("tol", self.tol is not None),
            ("restore_best", self.restore_best), ("mode", self.mode != "min")) if given]
        if self.monitor is None and needs_monitor:
            raise ValueError(f"Evaluation({', '.join(needs_monitor)}=) needs monitor: name the "
                             f"key of evaluate's dict to watch, e.g. monitor='accuracy'.")
        if self.patience is not None:
            _check_count(self.patience, "patience")
        if self.tol is not None and _arguments.is_concrete(self.tol):
            _arguments.check_real(self.tol, "tol")



@dataclasses.dataclass(frozen=True, eq=False)
@_keys.keyed
class Model:
    """A model's parts beyond its params: its randomness, its state, its extra outputs.

    Attributes:
      rng: a ``jax.random`` key for the model's own randomness (dropout):
        step ``t`` (global, counted from ``Run(start_step=)``) calls the
        loss with the keyword ``key=jax.random.fold_in(rng, t)``. Take it
        apart from ``fit``'s ``key`` (``key, rng = jax.random.split(seed)``).
        ``jax.vmap`` over it is a seed ensemble.
      state: model state that the forward pass updates (BatchNorm
        statistics): the loss is then ``loss(params, state, *batch) ->
        (value, new_state)``, the new state (same structure, shapes and
        dtypes) is carried to the next step, never differentiated (PRNG
        keys and integer counters included), and ``result.state`` is the
        last one. A flax nnx model: ``graphdef, params, rest =
        nnx.split(model, nnx.Param, ...)``, ``state=rest``, and a loss that
        merges them and returns ``(value, nnx.split(model, nnx.Param,
        ...)[2])`` (the recipe, run, is in ``functional_sgd.core._flax_nnx``).
      has_aux: the loss returns ``(value, aux)`` (with a state ``(value,
        new_state, aux)``); ``result.aux`` stacks aux over the steps.
      trainable: freezes part of params: a pytree of bools with the
        structure of params or a prefix of it, or a function ``leaf ->
        bool``. Frozen leaves pass through unchanged.

    ``rng``, ``state`` and ``has_aux`` are refused with a mesh and with
    short batches (``Shuffled(drop_last=False)``), whose losses are taken
    row by row.
    """

    rng: Any = None
    state: Any = None
    has_aux: bool = False
    trainable: Any = None

    def __post_init__(self) -> None:
        _check_flag(self.has_aux, "has_aux")
        if self.rng is not None and _arguments.is_concrete(self.rng):
            _arguments.check_key(self.rng, "rng")



@dataclasses.dataclass(frozen=True, eq=False)
@_keys.keyed
class Run:
    """How a run is cut, kept and continued.

    Attributes:
      chunk_size: run the loop as compiled chunks of this many steps, with
        a host step between them (progress, ``on_chunk``, checkpoints).
        With ``chunk_size >= 2`` the result has the same bits as one call;
        ``chunk_size=1`` runs each step as a program of its own, whose
        update XLA may round differently in the last bit.
      on_chunk: called after each chunk with that chunk's ``FitResult``
        (its ``losses`` cover the chunk; ``step`` is the global step after
        it); returning a true boolean scalar (Python, NumPy or JAX, as
        ``result.losses[-1] < 1.0`` gives) stops the run after that chunk,
        ``None`` or a false one goes on, anything else is refused.
      checkpoint: a file path: after every chunk the run's state is written
        there atomically, and the same call started again resumes from it
        with the same bits (on a GPU, with
        ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``). A memmap is
        fingerprinted by its file and a hash of 1,024 of its rows; a stream
        by its batches' shapes.
      mesh: a ``jax.sharding.Mesh``: rows sharded over all its axes, params
        replicated, gradients all-reduced every step. The loss must be a
        mean over the rows of its batch.
      record_params: also return the params before every step and after
        the last (``result.trajectory``).
      check_finite: refuse data holding NaN or inf.
      start_step: global index of the first step (``result.step`` to
        continue a run); it selects the batches drawn from ``key``.
      opt_state: the optimizer state to continue from (``result.opt_state``).
      speed: a :class:`functional_sgd.speed.SpeedPlan`; ``None`` for the defaults.
      progress: draw a tqdm bar on stderr (tqdm must be installed) that
        moves after each evaluation period, showing the latest evaluation's
        scalars (without an evaluation: at most 100 times a run). The run
        is cut at evaluation boundaries, each period one call of one
        compiled program, so nothing compiles per period.

    :meth:`after` continues a run: ``fit(..., run=Run.after(first))`` gives
    the same bits as one longer run.
    """

    chunk_size: int | None = None
    on_chunk: Callable[[Any], Any] | None = None
    checkpoint: str | os.PathLike[str] | None = None
    mesh: Any = None
    record_params: bool = False
    check_finite: bool = True
    start_step: Any = 0
    opt_state: Any = None
    speed: SpeedPlan | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if _check_flag(self.progress, "progress"):
            from ..drivers import check_tqdm
            check_tqdm()
        if self.chunk_size is not None:
            _check_count(self.chunk_size, "chunk_size")
        if self.on_chunk is not None and not callable(self.on_chunk):
            raise TypeError(f"on_chunk must be callable as on_chunk(result); got "
                            f"{self.on_chunk!r}.")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path; got {self.checkpoint!r}.")
        _check_flag(self.record_params, "record_params")
        _check_flag(self.check_finite, "check_finite")
        if self.speed is not None and not isinstance(self.speed, SpeedPlan):
            raise TypeError(f"speed must be a functional_sgd.speed.SpeedPlan; got "
                            f"{type(self.speed).__name__}.")

    @classmethod
    def after(cls, result: Any, **options: Any) -> "Run":
        """The run that continues ``result`` (its ``step`` and ``opt_state``).

        Epochs and evaluation periods count from the continued run's first
        step; a continuation that starts mid-epoch is refused with epochs.
        A result of ``Evaluation(restore_best=True)`` holds the best
        evaluation's params but the last step's ``step`` and ``opt_state``:
        continue from the params of the last step for the bits of one run.
        """
        if not (hasattr(result, "step") and hasattr(result, "opt_state")):
            raise TypeError(f"Run.after takes the FitResult of the run to continue; got "
                            f"{type(result).__name__}.")
        return cls(start_step=result.step, opt_state=result.opt_state, **options)


Loss = Callable[..., Any]


class Spec(NamedTuple):
    """What a :class:`Trainer` is: everything about a run but its params,
    data, learning rate and key."""

    loss: Loss
    optimizer: Any = None
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    rows: Sampled | Shuffled | Schedule | None = None
    stop: Stop | None = None
    evaluation: Evaluation | None = None
    model: Model | None = None
    run: Run | None = None
