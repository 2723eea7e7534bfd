"""Data-parallel fitting: rows sharded over a device mesh, gradients all-reduced.

``fit(..., run=Run(mesh=mesh))`` runs the same loop as on one device, inside
``jax.shard_map``: parameters and optimizer state are replicated, the rows of
``data`` are split in equal blocks over all axes of the mesh, and every step
all-reduces (``psum``) the devices' partial losses and gradients.

* Full batch: each device evaluates its own block of rows; data never moves.
* Mini-batch and stochastic: the global batch of step ``t`` (from ``indices``,
  or drawn from ``key`` exactly as on one device) is cut into equal slices of
  ``ceil(batch_size / devices)`` slots, one slice a device. The rows of a
  call's batches are routed to their slots before the loop, in one
  reduce-scatter (each row is added once to zeros, so it arrives exactly);
  inside the loop only the gradient crosses devices. Each device holds
  ``steps * ceil(batch_size / devices)`` routed rows: ``chunk_size`` bounds it.
  Routing looks at every slot of every batch on every device (static shapes
  cannot know in advance how many of a batch's rows a device holds), so it
  pays off when the loss costs more per row than copying the row does;
  full batch needs no routing and is where a mesh pays off first
  (bench/investigations/scaling.py measures both).

Rows that don't divide evenly are padded (with real rows, so every value stays
finite) and masked out. That needs one assumption about ``loss``: it is the
mean of a per-row loss, ``loss(p, B) = mean over rows r of B of loss(p, {r})``,
as ``mse`` and cross-entropy are. Each device sums the per-row losses of its
real rows, the sums are all-reduced and divided by the global row count:
the mean single-device ``fit`` computes, in another order of additions.

>>> import jax, jax.numpy as jnp
>>> import functional_sgd as fsgd
>>> mesh = jax.make_mesh((jax.device_count(),), ("data",))  # every device
>>> x, y = fsgd.lesson_data(jax.random.key(0))
>>> result = fsgd.fit(fsgd.linear_mse, jnp.array(fsgd.LESSON_START), (x, y), lr=0.1,
...                   steps=100, run=fsgd.Run(mesh=mesh))
>>> [round(float(a), 1) for a in result.params]
[3.1, 2.4]
"""

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def check_mesh(mesh, data):
    """Refuses what cannot run data-parallel, naming the argument."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "Run(mesh=) must be a jax.sharding.Mesh, e.g. "
            f"jax.make_mesh((jax.device_count(),), ('data',)); got {type(mesh).__name__}.")
    if not data:
        raise ValueError("Run(mesh=) splits the rows of data across devices, but data is (): "
                         "a data-free objective has nothing to split; drop the mesh.")


def data_parallel(loop, spec, mesh, carry, inputs, *, slots_kind):
    """Runs the traced ``loop(carry, inputs, spec=...)`` data-parallel over
    ``mesh``; returns its ``(Carry, Record)``, replicated.

    Each device runs ``loop`` on its own rows, with a spec whose loss is the
    global mean (:class:`_GlobalMean`) and whose batches are its slots of
    every step's global batch, ``slots_kind(slots)`` (the core's explicit
    schedule kind); the rest of the spec is the caller's.
    """
    return _sharded_loop(carry, inputs, loop=loop, spec=spec, mesh=mesh, slots_kind=slots_kind)


@dataclasses.dataclass(frozen=True)
class _GlobalMean:
    """The loss of the global batch, from the rows one device holds.

    ``sum over real local rows of loss(p, {r})``, all-reduced over the mesh and
    divided by the global row count. Frozen, so equal instances hash alike
    and the compiled loop is reused.
    """

    loss: Callable
    axes: Any
    count: Any  # the global batch's rows; None: count the real ones (padded batches)

    def __call__(self, params, real, *rows):
        local = real_rows_sum(self.loss, params, real, rows)
        if self.count is not None:
            return jax.lax.psum(local, self.axes) / self.count
        total, count = jax.lax.psum((local, real.sum(dtype=jnp.int32)), self.axes)
        return total / count.astype(total.dtype)


def real_rows_sum(loss, params, real, rows):
    """``sum over the rows r where real of loss(params, {r})``: the sum of a
    per-row loss, each row a batch of one (a padding row adds nothing)."""
    per_row = jax.vmap(lambda *row: loss(params, *(r[None] for r in row)))(*rows)
    return jnp.where(real, per_row, jnp.zeros((), per_row.dtype)).sum()


@partial(jax.jit, static_argnames=("loop", "spec", "mesh", "slots_kind"))
def _sharded_loop(carry, inputs, *, loop, spec, mesh, slots_kind):
    """``loop`` under ``shard_map`` (``fit`` never plans the moments here)."""
    axes = mesh.axis_names
    devices = mesh.size
    data, steps = inputs.data, spec.steps
    n = data[0].shape[0]
    per_device = -(-n // devices)
    # Padding repeats the last row: real values, masked out below.
    if n % devices:
        rows = jnp.minimum(jnp.arange(devices * per_device, dtype=jnp.int32), n - 1)
        data = tuple(a[rows] for a in data)
    blocks = tuple(_place(a, mesh, P(axes)) for a in data)
    indices = spec.batches.rows(inputs.key, inputs.indices, carry.step, steps)

    def on_each_device(blocks, replicated):
        carry, inputs, indices = replicated
        device = jax.lax.axis_index(axes)
        if indices is None:
            real = device * per_device + jnp.arange(per_device, dtype=jnp.int32) < n
            rows, schedule, count, batches = (real,) + blocks, None, n, spec.batches
        else:
            rows, slots = _route_batches(indices, blocks, device, axes=axes,
                                         per_device=per_device, devices=devices)
            schedule = jnp.arange(steps * slots, dtype=jnp.int32).reshape(steps, slots)
            # A padded schedule's steps hold different numbers of real rows.
            count = None if spec.batches.padded else indices.shape[1]
            batches = slots_kind(slots)
        local = dataclasses.replace(spec, loss=_GlobalMean(spec.loss, axes, count),
                                    batches=batches)
        return loop(carry, inputs._replace(data=rows, key=None, indices=schedule), spec=local)

    replicated = (carry, inputs._replace(data=(), key=None, indices=None), indices)
    return jax.shard_map(on_each_device, mesh=mesh, in_specs=(P(axes), P()),
                         out_specs=P())(blocks, replicated)


def _route_batches(indices, blocks, device, *, axes, per_device, devices):
    """Each device's slice of every step's global batch, flattened to rows.

    Returns ``((real, *rows), slots)``: ``rows[t * slots + j]`` is slot
    ``device * slots + j`` of step ``t``; ``real`` masks the padding slots
    (those past the batch, and ``-1`` rows of a padded schedule).
    """
    steps, batch = indices.shape
    slots = -(-batch // devices)
    # Padding slots point at row 0: a real row, masked out by `real`.
    padded = jnp.pad(indices, ((0, 0), (0, devices * slots - batch)))
    local = padded - device * per_device
    mine = (local >= 0) & (local < per_device)
    local = jnp.where(mine, local, 0)

    def route(block):
        held = block[local]
        mask = mine.reshape(mine.shape + (1,) * (block.ndim - 1))
        held = jnp.where(mask, held, jnp.zeros((), block.dtype))
        # Exactly one device holds each row: the sum over devices is that row.
        routed = jax.lax.psum_scatter(held, axes, scatter_dimension=1, tiled=True)
        return routed.reshape((steps * slots,) + block.shape[1:])

    real = jax.lax.dynamic_slice_in_dim(padded >= 0, device * slots, slots, axis=1)
    real &= (device * slots + jnp.arange(slots, dtype=jnp.int32) < batch)[None, :]
    real = real.reshape(-1)
    return (real,) + tuple(route(b) for b in blocks), slots


def _place(array, mesh, spec):
    """Lays ``array`` out on ``mesh``: ``reshard`` for explicit axes, else a constraint."""
    sharding = NamedSharding(mesh, spec)
    if all(kind == AxisType.Explicit for kind in mesh.axis_types):
        return jax.reshard(array, sharding)
    return jax.lax.with_sharding_constraint(array, sharding)
