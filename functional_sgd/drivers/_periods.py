"""Evaluation periods on the host: each period's training means, the hook
called after each evaluation, and a progress bar that moves per period.

Inside the compiled loop each evaluation also records the mean training
loss of its period (and the mean of each scalar aux metric) under keys that
start with :data:`TRAIN`. A run cut into chunks that do not end where
periods do has those means taken again on the host, from the joined losses
(:func:`period_means`), summed in step order as the loop sums them: the
same bits.

``Evaluation(on_evaluation=fn)`` and ``Run(progress=True)`` cut the run at
evaluation boundaries (``run_in_chunks``), so that every period is one call
of the same compiled program; :class:`PeriodHook` is the ``on_chunk`` that
calls ``fn(step, evals)`` for each evaluation a chunk made and moves the bar.
"""

import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

TRAIN = "train/"
"""The keys of ``evals`` that hold each period's training means:
``"train/loss"`` and ``"train/<aux key>"``. ``evaluate`` may not use them."""


def aux_metrics(aux):
    """``[(name, leaf), ...]``: the leaves of a loss's aux stacked over steps
    that hold a real scalar per step, named ``train/<key path>`` (``train/aux``
    for a bare one).

    >>> import numpy as np
    >>> [name for name, _ in aux_metrics({"acc": np.zeros(3), "logits": np.zeros((3, 10))})]
    ['train/acc']
    """
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(aux)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or np.ndim(leaf) != 1 or not (  # jnp's: a key dtype is neither
                jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            continue
        name = "/".join(_key_name(k) for k in path) or "aux"
        found.append((TRAIN + name, leaf))
    return found


def _key_name(entry):
    for field in ("key", "name", "idx"):
        if hasattr(entry, field):
            return str(getattr(entry, field))
    return str(entry)


def period_means(evals, eval_steps, losses, aux, start, cuts=None):
    """``evals`` with the training means of each period that spans a cut
    between pieces (at the local steps ``cuts``; ``None``: any period) taken
    again on the host: evaluation ``k`` (after global step ``eval_steps[k]``)
    over the losses of the steps since the evaluation before it (or the
    run's ``start``). A period within one piece keeps the loop's value."""
    if not evals or not any(name.startswith(TRAIN) for name in evals):
        return evals
    columns = {TRAIN + "loss": np.asarray(losses)}
    columns.update((name, np.asarray(leaf)) for name, leaf in aux_metrics(aux))
    evals = dict(evals)
    for name, column in columns.items():
        if name not in evals:
            continue
        out = np.array(evals[name])
        before = 0
        for k, step in enumerate(np.asarray(eval_steps)):
            if step < 0:
                continue
            end = int(step) - start
            spans = cuts is None or any(before < cut < end for cut in cuts)
            if end > before and spans:  # summed in step order, as the loop does
                dtype = out.dtype.type
                out[k] = np.cumsum(column[before:end].astype(dtype), dtype=dtype)[-1] \
                    / dtype(end - before)
            before = end
        evals[name] = out
    return evals


def asks_to_stop(answer):
    """Whether a hook's answer (``on_chunk``'s, ``on_evaluation``'s) stops the
    run: ``None`` goes on, a boolean scalar (Python, NumPy or a 0-d JAX
    bool, as ``r.losses[-1] < 1.0`` gives) says; anything else is refused
    rather than read as "go on".

    >>> import jax.numpy as jnp
    >>> [asks_to_stop(a) for a in (True, np.bool_(True), jnp.array(True), None, False)]
    [True, True, True, False, False]
    """
    if answer is None:
        return False
    if isinstance(answer, (bool, np.bool_)):
        return bool(answer)
    if getattr(answer, "shape", None) == () and getattr(answer, "dtype", None) == np.bool_:
        return bool(answer)
    raise TypeError(
        "on_chunk must return None, True or False (a Python, NumPy or JAX boolean scalar; "
        f"on_evaluation too); got {answer!r} of type {type(answer).__name__}. Return a "
        "comparison, e.g. result.losses[-1] < 1.0, or bool(...) of what you mean.")


class PeriodHook:
    """The ``on_chunk`` of a run cut at evaluation boundaries: calls the
    user's ``on_chunk``, then ``on_evaluation(step, evals)`` for each
    evaluation the chunk made, and moves ``bar``; any true boolean answer
    stops the run."""

    def __init__(self, on_chunk=None, on_evaluation=None, bar=None):
        self.on_chunk, self.on_evaluation, self.bar = on_chunk, on_evaluation, bar

    def __call__(self, chunk):
        stop = self.on_chunk is not None and asks_to_stop(self.on_chunk(chunk))
        if chunk.evals is None:
            made, on_host = [], {}
        else:  # one copy of each to the host, then NumPy (indexing a device array compiles)
            steps = np.asarray(chunk.eval_steps)
            made = np.flatnonzero(steps >= 0)
            on_host = {name: np.asarray(values) for name, values in chunk.evals.items()}
        for k in made:
            evals = {name: values[k] for name, values in on_host.items()}
            if self.on_evaluation is not None:
                stop |= asks_to_stop(self.on_evaluation(int(steps[k]), evals))
            if self.bar is not None:
                self.bar.set_postfix({name: f"{float(v):.4g}" for name, v in evals.items()
                                      if np.ndim(v) == 0}, refresh=False)
        if self.bar is not None:
            self.bar.update(int(chunk.steps_run))
        return stop


MAX_CHUNKS = 100
"""Without evaluations, a progress bar moves at most this many times a run."""


def period_chunks(every, steps):
    """The chunk size of a run cut at evaluation boundaries: ``every``
    steps, or with listed steps a function of the steps done giving the
    steps to the next listed one (or to the end); without evaluations
    (``every`` ``None``), at most :data:`MAX_CHUNKS` equal chunks.

    >>> period_chunks(25, 100), period_chunks(None, 1000)
    (25, 10)
    >>> cut = period_chunks((10, 25), 100)
    >>> [cut(done) for done in (0, 10, 25)]
    [10, 15, 75]
    """
    if every is None:
        return -(-steps // MAX_CHUNKS)
    if not isinstance(every, tuple):
        return every

    def to_next(done):
        return next((s for s in every if s > done), steps) - done
    return to_next


def check_tqdm():
    """Refuses ``progress=True`` without tqdm, saying how to install it."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        raise ImportError("Run(progress=True) draws a tqdm bar, and tqdm is not installed: "
                          "pip install tqdm (or drop progress).") from None


@contextlib.contextmanager
def progress(total, enabled):
    """A tqdm bar of ``total`` steps on stderr when ``enabled``, else ``None``."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="step", leave=False, file=sys.stderr) as bar:
        yield bar
