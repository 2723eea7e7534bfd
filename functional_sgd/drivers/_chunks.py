"""Running the compiled loop in chunks, with a host step between them.

A run of ``steps`` is cut into calls of ``chunk_size`` steps that continue
one another (params, optimizer state, global step, stop-rule state), so the
result has the same bits as one call. Between chunks the host can update a
progress bar or write a checkpoint; within a chunk nothing leaves the device.
"""

import jax
import numpy as np


def run_in_chunks(run_chunk, params, opt_state, start_step, indices, stop_state, *,
                  steps, chunk_size, on_chunk, record_params):
    """Calls ``run_chunk`` on successive chunks and joins their results.

    ``run_chunk(params, indices=, opt_state=, start_step=, stop_state=, steps=)``
    returns ``(FitResult, StopState)`` for one chunk; when its stop rule fired,
    the run ends there.
    """
    chunks = []
    done = 0
    while done < steps:
        length = min(chunk_size, steps - done)
        chunk_indices = None if indices is None else indices[done:done + length]
        result, stop_state = run_chunk(params, indices=chunk_indices, opt_state=opt_state,
                                       start_step=start_step, stop_state=stop_state,
                                       steps=length)
        chunks.append(result)
        params, opt_state, start_step = result.params, result.opt_state, result.step
        if on_chunk is not None:
            on_chunk(result)
        done += int(result.steps_run)
        if bool(stop_state.stopped):
            break
    return _join(chunks, steps, record_params)


def _join(chunks, steps, record_params):
    """One result for the whole run, joined on the host: eager device
    concatenation would compile anew for every number of chunks."""
    last = chunks[-1]
    losses = np.concatenate([np.asarray(c.losses)[:int(c.steps_run)] for c in chunks])
    trajectory = None
    if record_params:
        # Each chunk's path starts where the previous one ended: keep that point once.
        paths = [chunks[0].trajectory] + [
            jax.tree.map(lambda p: p[1:], c.trajectory) for c in chunks[1:]]
        trajectory = jax.tree.map(lambda *ps: np.concatenate(ps), *paths)
        missing = steps + 1 - jax.tree.leaves(trajectory)[0].shape[0]
        trajectory = jax.tree.map(
            lambda path, p: np.concatenate([path, np.broadcast_to(p, (missing,) + p.shape)]),
            trajectory, last.params)
    return run_result(last.params, last.opt_state, last.step, losses, steps, trajectory)


def run_result(params, opt_state, step, losses, steps, trajectory=None):
    """The ``FitResult`` of a run of ``steps`` whose first ``len(losses)`` steps
    ran: losses padded with NaN, ``steps_run`` and ``diverged_at`` read off them."""
    from ..core._fit import FitResult  # _fit imports this module
    steps_run = losses.shape[0]
    bad = np.flatnonzero(~np.isfinite(losses))
    padded = np.concatenate([losses, np.full(steps - steps_run, np.nan, losses.dtype)])
    # device_put moves host arrays without compiling (jnp.asarray stages a jit per shape).
    return FitResult(*jax.device_put((
        params, padded, np.int32(bad[0] if bad.size else -1), np.int32(steps_run), step,
        opt_state, trajectory)))
