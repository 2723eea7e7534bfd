"""Wall time split into compile time and run time."""

import contextlib
import time

import jax.monitoring

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
"""JAX's own timers for tracing, lowering and XLA compilation."""


class Timing:
    """Seconds spent compiling (tracing, lowering, XLA) and the rest, running."""

    def __init__(self):
        self.compile_seconds = 0.0
        self.total_seconds = 0.0

    @property
    def run_seconds(self):
        return max(self.total_seconds - self.compile_seconds, 0.0)

    def __str__(self):
        return (f"run {_seconds(self.run_seconds)}, "
                f"compile {_seconds(self.compile_seconds)}")


@contextlib.contextmanager
def timed():
    """Times the block; JAX reports its compile time through ``jax.monitoring``.

    Block on the results (``block_until_ready``) inside the block, or the
    run time stops at dispatch.

    >>> import jax.numpy as jnp
    >>> with timed() as timing:
    ...     _ = (jnp.arange(3) * 2).block_until_ready()
    >>> timing.total_seconds >= timing.compile_seconds >= 0
    True
    """
    timing = Timing()

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            timing.compile_seconds += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    began = time.perf_counter()
    try:
        yield timing
    finally:
        timing.total_seconds = time.perf_counter() - began
        jax.monitoring.unregister_event_duration_listener(listener)


def _seconds(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
