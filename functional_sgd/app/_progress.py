"""Progress on long runs: a tqdm bar that advances between compiled chunks.

The loop stays compiled: ``fit(..., run=Run(chunk_size=K, on_chunk=...))`` runs K
steps on the device and comes back to the host once per chunk, where the
bar moves, showing the latest evaluation of held-out data when ``fit``
evaluates one. Nothing syncs per step.
"""

import contextlib
import sys

import numpy as np

MAX_CHUNKS = 100
"""At most this many host round trips per run: enough to keep a bar lively."""

MIN_CHUNK = 1000
"""Fewer steps than this per chunk would spend more time on the host than on the device."""


def chunk_size_for(steps, multiple=1):
    """Steps per chunk for a run of ``steps``: at most ``MAX_CHUNKS`` chunks of at
    least ``MIN_CHUNK`` steps (one chunk for short runs), rounded up to a
    ``multiple`` of steps (a run's ``eval_every``) but never past ``steps``.

    Equal chunks share one compiled program; only a shorter last chunk compiles
    again. A chunk that is a whole number of evaluation periods starts each
    at the same place in its period, so it too shares one program.

    >>> chunk_size_for(100), chunk_size_for(50_000), chunk_size_for(1_000_000)
    (100, 1000, 10000)
    >>> chunk_size_for(12_345, multiple=1_234), chunk_size_for(100, multiple=300)
    (1234, 100)
    """
    size = max(-(-steps // MAX_CHUNKS), min(steps, MIN_CHUNK))
    return min(steps, -(-size // multiple) * multiple)


def wants_progress(flag, stream=None):
    """Whether to draw a bar: ``flag`` if given, else only when ``stream``
    (default stderr, where tqdm writes) is a terminal."""
    if flag is not None:
        return bool(flag)
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def progress_bar(steps, *, enabled, desc, multiple=1):
    """Yields the fields of a :class:`~functional_sgd.Run` that drive a bar of ``steps`` steps.

    ``fit(..., run=Run(**fields))`` with the yielded ``fields``: empty when the bar is
    off (one compiled call), else ``chunk_size`` and an ``on_chunk`` that
    moves the bar by each chunk's steps; each chunk is a whole number of ``multiple``
    steps (see :func:`chunk_size_for`).
    """
    if not enabled:
        yield {}
        return
    from tqdm import tqdm

    with tqdm(total=steps, desc=desc, unit="step", leave=False, file=sys.stderr) as bar:
        yield {"chunk_size": chunk_size_for(steps, multiple),
               "on_chunk": lambda chunk: _advance(bar, chunk)}


def progress_over(items, *, enabled, desc, unit):
    """``items``, through a tqdm bar that moves once per item when ``enabled``
    (drawing a long run's figures takes seconds)."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False, file=sys.stderr)


def _advance(bar, chunk):
    """Moves ``bar`` by a chunk's steps and shows its latest evaluation.
    Returns ``None``: an ``on_chunk`` returning ``True`` would stop the run
    (and tqdm's ``update`` returns ``True`` when it redraws)."""
    latest = latest_evaluation(chunk)
    if latest:
        bar.set_postfix(latest, refresh=False)
    bar.update(int(chunk.steps_run))


def latest_evaluation(chunk):
    """``{name: value}`` of the last evaluation a chunk's result made
    (``fit(evaluation=Evaluation(...))``), ``{}`` if it made none.

    >>> import numpy as np
    >>> from functional_sgd import FitResult
    >>> chunk = FitResult(*[None] * 9, evals={"accuracy": np.array([0.9, 0.95, np.nan])},
    ...                   eval_steps=np.array([10, 20, -1]))
    >>> latest_evaluation(chunk)
    {'accuracy': 0.95}
    """
    if chunk.evals is None:
        return {}
    made = np.flatnonzero(np.asarray(chunk.eval_steps) >= 0)
    if made.size == 0:
        return {}
    return {name: float(np.asarray(values)[made[-1]]) for name, values in chunk.evals.items()}
