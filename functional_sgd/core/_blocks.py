"""A long mini-batch run gathers its batches a block of steps at a time.

Steps larger than a few rows run as separate kernels, where a gather a step
costs about ten times reading a batch gathered up front; so the loop
gathers a run's batches before it (``SpeedPlan.pregather_bytes``). For a
long run that buffer is large (2,560 batches of 64 rows x 64 floats: 42 MiB)
and costs more than it saves: it does not stay in the cache, and a buffer
that size is fresh memory on every call, each page faulted in as it is
written. On 2 cores the gather of those 42 MiB alone took several times as
long per row as ten gathers of 4 MiB reusing one buffer
(``bench/investigations/evaluate_overhead.py``: plain ``fit`` slower than the same
run cut into periods). So a run whose batches would all be gathered up front but
take more than ``SpeedPlan.gather_block_bytes`` runs as a ``scan`` over
blocks of steps, each gathering its own batches (a piece of the plain loop,
as a chunk of that length would), then a last shorter block. The steps are the same and
see the same rows: the params keep their bits (under ``jax.vmap``, to
rounding: XLA compiles the batched step inside each loop its own way).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._types import Carry, Record, Training
from ._batches import Stacked
from ._stop import first_bad


def block_steps(spec, data, has_indices):
    """Steps per block for ``spec``'s run, or ``None`` to run it as one piece.

    Only a run that would gather all its batches before one ``scan`` (rows
    drawn from a key or given as indices; steps not tiny; the whole
    schedule within ``pregather_bytes`` and drawn at once) and whose batches
    take more than ``gather_block_bytes`` runs in blocks of at most that
    many bytes (4 MiB by default; blocks of 16 to 1,280 of the benchmark's
    steps all ran faster than gathering its 2,560 at once); a stop
    rule's ``while_loop`` and a recorded trajectory keep their one piece.
    The benchmark's epoch (256 batches of 64 rows x 65 floats: 4.26 MB)
    is just over 4 MiB, so it runs in blocks of 160 steps; there, blocks of
    its 256-step epochs ran a few percent faster than blocks of 160 in
    each of 5 runs, and blocks of 128 in between (``bench/investigations/evaluate_overhead.py``
    written by hand gathers an epoch at a time).
    """
    batches, plan = spec.batches, spec.plan
    if (spec.evaluation is not None or spec.stop.active or spec.record_params
            or isinstance(batches, Stacked) or batches.batch_size is None
            or not (batches.keyed or has_indices) or not data):
        return None
    if batches.keyed and batches.chunk(spec.steps, plan.schedule_budget) is not None:
        return None  # drawn a chunk at a time inside the loop
    step_bytes = batches.batch_size * sum(
        int(np.prod(a.shape[1:], dtype=int)) * a.dtype.itemsize for a in data)
    total = spec.steps * step_bytes
    if not plan.gather_block_bytes or step_bytes <= plan.tiny_step_bytes \
            or total > plan.pregather_bytes or total <= plan.gather_block_bytes:
        return None
    block = max(1, plan.gather_block_bytes // step_bytes)
    if block >= spec.steps:
        return None
    # A block that divides the run compiles one piece, not a second for the rest.
    return next((b for b in range(block, block // 2, -1) if spec.steps % b == 0), block)


def run_in_blocks(piece, block, spec, prepared, training, inputs):
    """``spec.steps`` steps as a ``scan`` over pieces of ``block`` steps and
    a last shorter piece (traced); ``(Carry, Record)`` as one piece returns
    them."""
    model, stop = spec.model, training.stop  # the stop state: read, never carried
    blocks, tail = divmod(spec.steps, block)

    def run_piece(training, start, length):
        part_inputs = inputs
        if inputs.indices is not None:
            part_inputs = inputs._replace(
                indices=jax.lax.dynamic_slice_in_dim(inputs.indices, start, length))
        out, record = piece(dataclasses.replace(spec, steps=length),
                            prepared._replace(start_step=prepared.start_step + start),
                            training._replace(stop=stop), part_inputs)
        return Training(model.split(out.params)[0], out.opt_state, out.state, None), \
            (record.losses, record.aux)

    training, (losses, aux) = jax.lax.scan(
        lambda training, b: run_piece(training, b * block, block),
        training._replace(stop=None), jnp.arange(blocks, dtype=jnp.int32))
    losses, aux = jax.tree.map(lambda a: a.reshape((blocks * block,) + a.shape[2:]),
                               (losses, aux))
    if tail:
        training, last = run_piece(training, blocks * block, tail)
        losses, aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), (losses, aux), last)
    return (Carry(model.join(training.params, prepared.frozen), training.opt_state, None, None,
                  training.state),
            Record(losses, first_bad(losses, None), None, None, aux))
