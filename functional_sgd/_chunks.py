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
    losses = np.concatenate([np.asarray(c.losses) for c in chunks])
    losses = np.concatenate([losses, np.full(steps - losses.shape[0], np.nan, losses.dtype)])
    offsets = [0]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + int(chunk.steps_run))
    diverged_at = -1
    for offset, chunk in zip(offsets, chunks):
        if int(chunk.diverged_at) >= 0:
            diverged_at = offset + int(chunk.diverged_at)
            break
    steps_run = offsets[-1] + int(last.steps_run)
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
    # device_put moves host arrays without compiling (jnp.asarray stages a jit per shape).
    return last._replace(**jax.device_put(dict(
        losses=losses, diverged_at=np.int32(diverged_at), steps_run=np.int32(steps_run),
        trajectory=trajectory)))
