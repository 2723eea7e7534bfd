"""The front door: :func:`fit`, a thin convenience over :class:`Trainer`.

A :class:`Trainer` holds one spec (the loss, the optimizer, how many steps,
which rows, the stop rule, the evaluation, the model's parts, how the run is
cut) and remembers the calls that passed its checks, so the same call again
goes straight to the compiled loop. ``fit`` keeps one such memory for the
process, keyed by the spec itself (``_warm.key``: every field of every
option joins the key; none is listed by hand).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NoReturn, TypeVar

import jax

from .._types import FitResult, Moved
from . import _arguments, _data_checks, _keys, _optimizer_checks, _stop, _warm
from ._fit import Remember, run_spec, tiny_lr_dtypes
from ._resolve import traced
from ._options import Evaluation, Loss, Model, Run, Sampled, Schedule, Shuffled, Spec, Stop


MOVED = {
    "indices": "rows=fsgd.Schedule(indices)",
    "replace": "rows=fsgd.Sampled() (replace=True) or rows=fsgd.Shuffled() (replace=False)",
    "drop_last": "rows=fsgd.Shuffled(drop_last=...) (or fsgd.Schedule(indices, padded=True))",
    "tol": "stop=fsgd.Stop(tol=...) (on held-out data: fsgd.Evaluation(tol=...))",
    "patience": "stop=fsgd.Stop(patience=...) (on held-out data: fsgd.Evaluation(patience=...))",
    "evaluate": "evaluation=fsgd.Evaluation(evaluate, data)",
    "eval_data": "evaluation=fsgd.Evaluation(evaluate, data)",
    "eval_every": "evaluation=fsgd.Evaluation(..., every=...)",
    "monitor": "evaluation=fsgd.Evaluation(..., monitor=...)",
    "mode": "evaluation=fsgd.Evaluation(..., mode=...)",
    "restore_best": "evaluation=fsgd.Evaluation(..., restore_best=...)",
    "rng": "model=fsgd.Model(rng=...)",
    "state": "model=fsgd.Model(state=...)",
    "has_aux": "model=fsgd.Model(has_aux=...)",
    "trainable": "model=fsgd.Model(trainable=...)",
    "chunk_size": "run=fsgd.Run(chunk_size=...)",
    "on_chunk": "run=fsgd.Run(on_chunk=...)",
    "checkpoint": "run=fsgd.Run(checkpoint=...)",
    "mesh": "run=fsgd.Run(mesh=...)",
    "record_params": "run=fsgd.Run(record_params=...)",
    "check_finite": "run=fsgd.Run(check_finite=...)",
    "start_step": "run=fsgd.Run(start_step=...) (or run=fsgd.Run.after(result))",
    "opt_state": "run=fsgd.Run(opt_state=...) (or run=fsgd.Run.after(result))",
    "speed": "run=fsgd.Run(speed=fsgd.speed.SpeedPlan(...))",
    "fast_path": "run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=...))",
}
"""Where each keyword of the older ``fit`` lives now."""

F = TypeVar("F", bound=Callable[..., Any])


def hides_moved(function: F) -> F:
    """``function``, whose ``**moved`` (the keywords of the older API, each
    answered by :func:`refuse_moved`) ``inspect.signature`` and ``help``
    leave out: they show the parameters it takes. Typed ``Moved``, it lets
    a type checker refuse any keyword ``function`` does not take. (No
    wrapper: a wrapper's call would cost every warm call.)"""
    signature = inspect.signature(function)
    function.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD])
    return function


def refuse_moved(name: str, moved: dict[str, Any]) -> NoReturn:
    """A ``TypeError`` for a call of ``name`` with keywords it does not take:
    one of the older API's names its new home (:data:`MOVED`)."""
    for keyword in moved:
        if keyword in MOVED:
            raise TypeError(f"{name}() no longer takes {keyword}=: it is now "
                            f"{MOVED[keyword]}.")
    raise TypeError(f"{name}() got an unexpected keyword argument {next(iter(moved))!r}.")


class Trainer:
    """One spec's training loop, compiled once and called as often as needed.

    ``Trainer(loss, ...)`` takes everything about a run but the params, the
    data, the learning rate and the key; ``trainer(params, data, lr=...,
    key=...)`` runs it and returns a :class:`FitResult`. The first call
    checks its arguments, traces the loss and compiles the loop; a call
    that repeats an earlier one's JAX arrays (data, key, held-out data,
    schedule) with params of the same structure, shapes and dtypes skips the
    checks and goes straight to the compiled loop. New data, params or a new
    learning rate of the same shapes compile nothing. :func:`fit` is
    ``Trainer(loss, ...)(params, data, lr=..., key=...)``, its trainers
    kept by their spec.

    Args:
      loss: ``loss(params, *batch) -> scalar``, as for :func:`fit`.
      optimizer: an optax ``GradientTransformation``, or ``None`` for plain SGD.
      steps: the number of updates.
      epochs: passes over the data, instead of ``steps``.
      batch_size: rows per step; ``None`` for all.
      rows: :class:`Sampled`, :class:`Shuffled` or :class:`Schedule`.
      stop: a :class:`Stop` rule on the training loss.
      evaluation: an :class:`Evaluation` of held-out data.
      model: a :class:`Model` (``rng``, ``state``, ``has_aux``, ``trainable``).
      run: a :class:`Run` (chunks, checkpoints, a mesh, continuing a run).

    >>> import jax, jax.numpy as jnp, functional_sgd as fsgd
    >>> x, y = fsgd.lesson_data(jax.random.key(0))
    >>> trainer = fsgd.Trainer(fsgd.linear_mse, steps=100, batch_size=10)
    >>> a = jnp.array([0.5, 0.75])
    >>> results = [trainer(a, (x, y), lr=lr, key=jax.random.key(1)) for lr in (0.01, 0.1)]
    >>> [bool(r.losses[-1] < r.losses[0]) for r in results]
    [True, True]
    """

    def __init__(self, loss: Loss, *, optimizer: Any = None, steps: int | None = None,
                 epochs: int | None = None, batch_size: int | None = None,
                 rows: Sampled | Shuffled | Schedule | None = None, stop: Stop | None = None,
                 evaluation: Evaluation | None = None, model: Model | None = None,
                 run: Run | None = None, **moved: Moved) -> None:
        if moved:
            refuse_moved("Trainer", moved)
        self.spec = Spec(loss, optimizer, steps, epochs, batch_size, rows, stop, evaluation,
                         model, run)
        check_spec(self.spec)
        self._memory = _warm.Memory()
        self._head = self.spec, spec_part(self.spec)  # one tuple: threads see a matching pair

    __init__ = hides_moved(__init__)

    def __call__(self, params: Any, data: Any = (), *, lr: Any = None,
                 key: jax.Array | None = None) -> FitResult:
        """Runs the loop from ``params`` on ``data`` (see :func:`fit`).

        Args:
          params: the initial parameters, any pytree.
          data: the training data (see :func:`fit`).
          lr: the learning rate, or an optax schedule; not with an optimizer.
          key: the ``jax.random`` key that draws the batches.

        Returns:
          A :class:`FitResult`.
        """
        spec = self.spec
        keyed, head = self._head
        if keyed is not spec:  # spec was replaced since: its calls have keys of their own
            head = spec_part(spec)
            self._head = spec, head
        return train(self._memory, spec, head, params, data, lr, key)

    def __repr__(self) -> str:
        given = ", ".join(f"{name}={value!r}" for name, value in self.spec._asdict().items()
                          if value is not None and name != "loss")
        return f"Trainer({getattr(self.spec.loss, '__name__', self.spec.loss)!r}, {given})"


_FIT_MEMORY = _warm.Memory()
"""The calls :func:`fit` remembers (bounded: ``_warm.KEPT``)."""


@hides_moved
def fit(loss: Loss, params: Any, data: Any = (), *, lr: Any = None, optimizer: Any = None,
        steps: int | None = None, epochs: int | None = None, batch_size: int | None = None,
        key: jax.Array | None = None, rows: Sampled | Shuffled | Schedule | None = None,
        stop: Stop | None = None, evaluation: Evaluation | None = None,
        model: Model | None = None, run: Run | None = None, **moved: Moved) -> FitResult:
    """Fits ``params`` by gradient descent on ``loss``, in one compiled call.

    Each step ``t`` takes a batch ``B_t`` of rows and applies
    ``p <- p - lr * grad L_{B_t}(p)`` (or the given optax optimizer), where
    ``L_B(p) = loss(p, *(a[B] for a in data))``.

    * no ``batch_size``: batch gradient descent, every step sees all rows;
    * ``batch_size=k`` with ``key``: mini-batch descent, ``k`` random rows a
      step (``rows=Sampled()``, the default, or ``rows=Shuffled()`` epochs);
    * ``batch_size=1`` with ``key``: stochastic descent, one row a step;
    * ``rows=Schedule(indices)``: an explicit schedule.

    ``params``, ``data``, ``lr`` and ``key`` are traced, and so are the
    arrays inside the option values (held-out data, a model's ``rng`` and
    ``state``, a schedule, ``tol`` and ``patience``): new values of the
    same shapes reuse the compiled loop, and ``jax.vmap(fit)`` over any of
    them is a sweep. ``loss``, ``optimizer``, ``steps``, ``batch_size`` and
    the options' other fields shape the program: changing them compiles
    again (so define ``loss`` once, not as a fresh ``lambda`` per call).
    A keyword of the older ``fit`` (``eval_every=``, ``tol=``, ...) is
    refused with a ``TypeError`` that names its new home (``**moved``).

    Args:
      loss: ``loss(params, *batch) -> scalar`` (with a model's state, aux
        or rng, see :class:`Model`).
      params: initial parameters, any pytree (NumPy or JAX arrays; an
        equinox ``Module``, a flax nnx ``State``, a dict, ...). Its leaves
        that are arrays of an inexact dtype train (NumPy scalars too);
        every other leaf (integer, bool and key arrays, functions, Python
        ints, ``None``) passes through unchanged: no gradient, no update,
        no optimizer state. A Python float trains (as a float array) when
        it is the whole params or sits in dicts, lists and tuples only;
        inside a Module or any other pytree node it is a compile-time
        constant, never traced, as equinox has it (``eqx.nn.Dropout``'s
        rate). A complex leaf steps along the conjugate of ``jax.grad``'s
        gradient, as in torch and optax. ``result.params`` has the type
        given. An nnx random stream or ``BatchStat`` belongs in
        ``Model(state=...)``, not here.
      data: a tuple of arrays sharing their leading axis ``n`` (unpacked
        into the loss's arguments), or ``()`` for a data-free objective; or
        any other pytree of such arrays (a dict is passed as one argument).
        NumPy, JAX, ``np.memmap`` and CPU torch arrays are accepted. A
        ``np.memmap`` with ``batch_size`` (or a schedule) is never read
        whole: each block of steps has its rows read from the file and
        checked on the host (a memmap whose file was replaced since it was
        made is refused). A :func:`~functional_sgd.stream` of batches trains
        on any iterable. When any input is a NumPy array, ``fit`` returns
        once the run has finished (JAX's CPU client may read NumPy memory in
        place); with JAX arrays only, it returns at once, as JAX calls do.
      lr: the learning rate ``> 0``; required unless ``optimizer`` is
        given. Or a schedule ``lr(step) -> rate`` (an optax schedule): step
        ``t`` (global, counted from ``Run(start_step=)``) updates ``p <- p -
        lr(t) * g``, with the bits of ``optimizer=optax.sgd(lr)``. A
        schedule whose rate is negative or not finite at any step of the
        run is refused before it runs (a rate of 0 passes).
      optimizer: an optax ``GradientTransformation`` used instead of plain
        SGD (it carries its own learning rate); it sees only the trainable
        leaves. One that takes extra arguments (``reduce_on_plateau``,
        ``lbfgs``, ``polyak_sgd``) gets ``value=``, ``grad=`` and
        ``value_fn=`` on every update.
      steps: the number of updates; may be omitted with ``epochs`` or a
        schedule.
      epochs: the number of passes over the data instead of ``steps``: an
        epoch is one step without ``batch_size``, ``n // batch_size`` steps
        with ``Shuffled()`` (``ceil(n / batch_size)`` with
        ``drop_last=False``) and ``ceil(n / batch_size)`` steps of
        independent draws with ``Sampled()``.
      batch_size: rows per step, ``1 <= batch_size <= n``; ``None`` for all.
      key: ``jax.random`` key that draws the batches; required with
        ``batch_size``. Step ``t`` draws from ``fold_in(key, t)``.
      rows: which rows each step sees: :class:`Sampled` (the default with
        ``batch_size``), :class:`Shuffled` epochs or a :class:`Schedule`.
      stop: a :class:`Stop` rule on the training loss (``tol``,
        ``patience``); the run ends early and ``result.steps_run`` says when.
      evaluation: an :class:`Evaluation` of held-out data inside the loop,
        and the stop rule it may drive (``monitor``, ``patience``,
        ``restore_best``).
      model: a :class:`Model`: the model's ``rng``, ``state``, ``has_aux``
        and ``trainable`` parts.
      run: a :class:`Run`: chunks, ``on_chunk``, checkpoints, a mesh,
        recorded params, ``check_finite``, the step and optimizer state to
        continue from, and the speed plan.

    Returns:
      A :class:`FitResult`. Its records (losses, aux, trajectory,
      evaluations) are estimated from their shapes before anything
      compiles: a call whose records would take more than half this
      machine's memory is refused, naming each record's size.
      ``diverged_at`` is the first step whose loss is not finite or more
      than ``1e15 * max(1, |losses[0]|)``, ``-1`` if none.

    >>> import jax, jax.numpy as jnp
    >>> from functional_sgd import fit, lesson_data, linear_mse
    >>> x, y = lesson_data(jax.random.key(0))
    >>> result = fit(linear_mse, jnp.array([0.5, 0.75]), (x, y), lr=0.1, steps=100)
    >>> bool(result.losses[-1] < 0.1 < result.losses[0])
    True
    >>> [round(float(a), 1) for a in result.params]
    [3.1, 2.4]
    """
    if moved:
        refuse_moved("fit", moved)
    spec = Spec(loss, optimizer, steps, epochs, batch_size, rows, stop, evaluation, model, run)
    return train(_FIT_MEMORY, spec, spec_part(spec), params, data, lr, key)


def train(memory: _warm.Memory, spec: Spec, head: _keys.Part | None, params: Any, data: Any,
          lr: Any, key: Any) -> FitResult:
    """Runs ``spec`` from ``params`` on ``data``; a call ``memory`` holds
    skips its checks. ``head``: ``spec_part(spec)``."""
    call: Any = None if callable(lr) else _warm.key(head, params, data, key)
    if call is not None:
        try:
            warm = memory.recall(call)
        except TypeError:  # a loss that does not hash (its __eq__ without __hash__)
            warm = call = None  # is checked every time
        if warm is not None and (warm.unchanged(call[1]) or _values_still_pass(
                memory, call, warm, spec, data)):
            lr = _optimizer_checks.check_lr(lr, spec.optimizer, None, params)
            if not tiny_lr_dtypes(lr, spec.optimizer, params):  # else probed on the full path
                result: FitResult = warm.again(params, data, lr, key, traced(spec))
                return result
    check_spec(spec)  # a call not remembered yet is checked, whatever its key
    with _data_checks.remembering(memory.facts):
        result = run_spec(spec, params, data, lr, key,
                          None if call is None else Remember(memory, call))
    return result  # type: ignore[no-any-return]


def _values_still_pass(memory: _warm.Memory, call: Any, warm: Any, spec: Spec,
                       data: Any) -> bool:
    """Whether a remembered call's arrays, changed since, pass the checks of
    their values again (``_data_checks.values_still_pass``), and the stop
    rule's ``tol`` and ``patience`` theirs (``_stop.choose``)."""
    if spec.run is not None and type(spec.run.start_step) is not int:
        return False  # an array: the host counts from it (result.step); the full path reads it
    arrays = traced(spec)
    try:
        _stop.choose(arrays.tol, arrays.patience)
    except (TypeError, ValueError):
        return False  # the full path says why
    passed: bool = _data_checks.values_still_pass(
        data, arrays.indices, arrays.eval_data, check_finite=spec.run is None or spec.run.check_finite,
        drop_last=not isinstance(spec.rows, Schedule) or not spec.rows.padded,
        padded=warm.again.spec.batches.padded, facts=memory.facts)
    if passed:
        memory.passed_again(call, warm)
    return passed


def spec_part(spec: Spec) -> _keys.Part | None:
    """What the key of a call of ``spec`` takes from ``spec`` (``_warm.key``),
    or ``None`` when its calls are checked every time (a model's parts,
    chunks, meshes, checkpoints, an optimizer state to continue from, a
    progress bar, a host loop over periods, an option not of its kind).

    Each option value brings the part it worked out when it was built
    (``_keys.keyed``); ``Run()`` with every field its default is no ``Run``.
    """
    loss, optimizer, steps, epochs, batch_size, rows, stop, evaluation, model, run = spec
    if model is not None:
        return None
    plain = _keys.PLAIN
    head: _keys.Part | None
    if type(optimizer) in plain and type(steps) in plain and type(epochs) in plain \
            and type(batch_size) in plain:  # the common case, kept cheap
        head = _keys.Part((loss, optimizer, steps, epochs, batch_size, type(optimizer),
                           type(steps), type(epochs), type(batch_size)), ())
    else:
        head = _keys.part_of(loss, optimizer, steps, epochs, batch_size)
        if head is None:
            return None
    if rows is None and stop is None and evaluation is None and run is None:
        return head  # the lesson's calls
    # Each option: of its kind, then the part it worked out when built.
    arrays, rows_flat, stop_flat, evaluation_flat, run_flat = head.arrays, None, None, None, None
    if rows is not None:
        part = _keys.kept_part(rows) if type(rows) in _ROWS else None
        if part is None:
            return None
        arrays, rows_flat = arrays + part.arrays, part.flat
    if stop is not None:
        part = _keys.kept_part(stop) if type(stop) is Stop else None
        if part is None:
            return None
        arrays, stop_flat = arrays + part.arrays, part.flat
    if evaluation is not None:
        part = _keys.kept_part(evaluation) if type(evaluation) is Evaluation \
            and evaluation.on_evaluation is None else None  # else a host loop over periods
        if part is None:
            return None
        arrays, evaluation_flat = arrays + part.arrays, part.flat
    if run is not None:
        part = _keys.kept_part(run) if type(run) is Run and run.chunk_size is None \
            and run.on_chunk is None and run.checkpoint is None and run.mesh is None \
            and run.opt_state is None and not run.progress else None
        if part is None:
            return None
        if part.flat != _DEFAULT_RUN:  # Run() is no Run
            arrays, run_flat = arrays + part.arrays, part.flat
    if rows_flat is None and stop_flat is None and evaluation_flat is None and run_flat is None:
        return head  # no option but Run(): the lesson's call
    return _keys.Part((head.flat, rows_flat, stop_flat, evaluation_flat, run_flat), arrays)


_OPTION_TYPES = {"rows": (Sampled, Shuffled, Schedule), "stop": (Stop,),
                 "evaluation": (Evaluation,), "model": (Model,), "run": (Run,)}
_OPTION_FIELDS = tuple((Spec._fields.index(name), kinds) for name, kinds in _OPTION_TYPES.items())
"""Each option's place in a :class:`Spec` and its kinds, found by name."""
_ROWS = _OPTION_TYPES["rows"]
_DEFAULT_RUN = _keys.part_of(Run()).flat  # type: ignore[union-attr]  # a Run() has a part


def check_spec(spec: Spec) -> None:
    """``steps``, ``epochs`` and ``batch_size`` are ``None`` or ints ``>= 1``
    (not ``steps`` and ``epochs`` both), and each option of ``spec`` is
    ``None`` or a value of its kind: what needs no params or data is
    checked when a :class:`Trainer` is built."""
    for name, maximum in (("steps", _arguments.MAX_STEP), ("epochs", _arguments.MAX_STEP),
                          ("batch_size", None)):
        value = getattr(spec, name)
        if value is not None:
            _arguments.check_int(value, name, minimum=1, maximum=maximum)
    if spec.steps is not None and spec.epochs is not None:
        raise ValueError(f"give steps= or epochs=, not both; got steps={spec.steps} and "
                         f"epochs={spec.epochs}.")
    if not _of_their_kinds(spec):
        for name, kinds in _OPTION_TYPES.items():
            value = getattr(spec, name)
            if value is not None and not isinstance(value, kinds):
                expected = " or ".join(f"fsgd.{kind.__name__}(...)" for kind in kinds)
                raise TypeError(f"{name} must be {expected}; got {value!r}.")


def _of_their_kinds(spec: Spec) -> bool:
    """Whether each option of ``spec`` is ``None`` or a value of its kind (a
    remembered call's ``steps``, ``epochs`` and ``batch_size`` passed
    :func:`check_spec`: the same values are in its key)."""
    return all(spec[i] is None or isinstance(spec[i], kinds) for i, kinds in _OPTION_FIELDS)


