"""An opt-in, process-wide set-up of JAX's CPU backend for small, short fits.

On a small problem (the lesson: 100 rows, 100 steps) a fit is dominated not
by arithmetic but by hand-offs between threads, measured on a 2-core VM:

* JAX runs each CPU program on a worker thread and wakes the caller when it
  is done: on the lesson that hand-off costs more than the loop itself.
* XLA:CPU runs every kernel of a loop body as a task of a dataflow
  executor, unless the loop is small enough (one iteration touching under
  1 KiB) to be compiled into a single kernel: the lesson's step touches a
  few KiB, so each of its 100 steps pays the executor's overhead.

Both are process-wide settings read when JAX starts its CPU backend, so a
library cannot change them for one call; :func:`tune_cpu` sets them for a
program that asks, and refuses once it is too late to take effect.
"""

from __future__ import annotations

import os

import jax

SMALL_LOOP_BYTES = 1 << 16
"""Loops whose one iteration touches fewer bytes become a single kernel."""

_SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"


def tune_cpu(*, inline_dispatch: bool = True, small_loops: bool = True) -> dict[str, object]:
    """Sets up this process's JAX CPU backend for many small, short fits.

    Call it at the start of a program, before the first JAX array is made
    (``tests/test_tuning.py`` runs this in fresh interpreters)::

        import functional_sgd as fsgd
        fsgd.tune_cpu()

    On the lesson a warm ``fit`` runs markedly faster; ``python -m bench.run``
    measures it (its section "With ``functional_sgd.tune_cpu()``"). Results
    are the same up to rounding (a loop compiled as one kernel may order a
    reduction differently).

    Args:
      inline_dispatch: run single-device CPU programs on the calling thread
        (``jax_cpu_enable_async_dispatch=False``). Calls then return when the
        result is ready, so Python no longer overlaps with the computation;
        multi-device programs stay asynchronous.
      small_loops: compile every while loop (``fit``'s loop, anyone's) whose
        iteration touches under ``SMALL_LOOP_BYTES`` as one kernel, instead of
        only those under 1 KiB (XLA's option ``xla_cpu_small_while_loop_byte_threshold``,
        added to ``XLA_FLAGS``). Loops with larger steps are unaffected.

    Returns:
      The settings made, as a dict (empty when there was nothing to do).

    Raises:
      RuntimeError: JAX has already started its backends, so the settings
        could not take effect (call ``tune_cpu`` before any JAX computation).
    """
    if _backends_started():
        raise RuntimeError(
            "tune_cpu() must run before JAX starts its backends (before the first "
            "array or computation); call it at the top of the program.")
    made: dict[str, object] = {}
    if inline_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        made["jax_cpu_enable_async_dispatch"] = False
    if small_loops:
        flags = os.environ.get("XLA_FLAGS", "")
        if _SMALL_LOOP_OPTION not in flags:  # a value the user chose is kept
            os.environ["XLA_FLAGS"] = _with_backend_option(
                flags, f"{_SMALL_LOOP_OPTION}={SMALL_LOOP_BYTES}")
            made["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    return made


def _with_backend_option(flags, option):
    """``flags`` with ``option`` added to ``--xla_backend_extra_options``
    (a comma-separated list, which XLA_FLAGS may already hold)."""
    words = flags.split()
    for i, word in enumerate(words):
        if word.startswith("--xla_backend_extra_options="):
            words[i] = f"{word},{option}"
            return " ".join(words)
    return " ".join(words + [f"--xla_backend_extra_options={option}"])


def _backends_started():
    try:
        from jax._src import xla_bridge
    except ImportError:  # JAX moved it: assume not started, as on a fresh import
        return False
    return xla_bridge.backends_are_initialized()
