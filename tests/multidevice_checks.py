"""Data-parallel ``fit`` on 2 and 8 simulated CPU devices against one device.

Run by tests/test_parallel.py in a subprocess, because the device count is
fixed when jax starts: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
must be set before jax is imported. Prints one JSON object of measurements;
the test makes the assertions.
"""

import json
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from helpers import count_compilations, max_relative_error

STEPS = 120
MODES = {
    "batch": {},
    "mini-batch": {"batch_size": 10, "key": jax.random.key(1)},
    "stochastic": {"batch_size": 1, "key": jax.random.key(1)},
    "indices": {"rows": "schedule"},
    # shuffled epochs of 37 rows in 4 batches of 10, the last one holding 7 real rows
    "drop_last=False": {"batch_size": 10, "key": jax.random.key(1), "rows": fsgd.Shuffled(drop_last=False)},
}

# devices/rows: 100 rows split evenly over 2 devices, batches of 9 not;
# 37 rows over 8 devices leave padding rows, and batches of 10 and 1 padding slots
# (and with drop_last=False, -1 padding rows: every fourth step has 7 real rows).
# (Keyed modes only differ from "indices" in where the schedule comes from.)
MESHES = {"2/100": ("batch", "indices"),
          "8/37": ("batch", "mini-batch", "stochastic", "drop_last=False")}


def lesson(n):
    x, y = fsgd.lesson_data(jax.random.key(0), n=n, dtype=jnp.float64)
    return np.asarray(x), np.asarray(y), np.array(fsgd.LESSON_START)


def mesh_of(shape, names=("data",)):
    return jax.make_mesh(shape, names, devices=jax.devices()[:int(np.prod(shape))])


def fit(data, start, **kwargs):
    kwargs = {"lr": 0.1, "steps": STEPS, **kwargs}
    if isinstance(kwargs.get("rows"), str):  # "schedule": drawn for these rows
        kwargs["rows"] = fsgd.Schedule(np.asarray(
            fsgd.sample_indices(jax.random.key(2), data[0].shape[0], STEPS, 9)))
    return fsgd.fit(fsgd.linear_mse, start, data, **kwargs)


def agreement(n, devices, modes):
    """Max relative error of params and losses per mode, and the devices used."""
    x, y, start = lesson(n)
    out = {}
    for mode in modes:
        kwargs = MODES[mode]
        one = fit((x, y), start, **kwargs)
        many = fit((x, y), start, run=fsgd.Run(mesh=mesh_of((devices,))), **kwargs)
        out[mode] = {"params": max_relative_error(many.params, one.params),
                     "losses": max_relative_error(many.losses, one.losses),
                     "devices": len(many.params.sharding.device_set),
                     "trained": float(one.losses[-1] / one.losses[0])}
    return out


def resumed_on_mesh(data, start, mesh, **kwargs):
    """A checkpointed run crashed after its first chunk, then resumed: the step it
    resumed from, and its relative error to the run uninterrupted."""
    import tempfile

    class Crash(Exception):
        pass

    def crash(result):
        raise Crash

    chunk = STEPS // 2
    whole = fit(data, start, run=fsgd.Run(chunk_size=chunk, mesh=mesh), **kwargs)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "run.npz")
        try:
            fit(data, start, run=fsgd.Run(chunk_size=chunk, on_chunk=crash, checkpoint=path,
                                          mesh=mesh), **kwargs)
        except Crash:
            pass
        starts = []
        resumed = fit(data, start, run=fsgd.Run(
            chunk_size=chunk, on_chunk=lambda r: starts.append(int(r.step) - int(r.steps_run)),
            checkpoint=path, mesh=mesh), **kwargs)
    return {"error": max_relative_error(resumed, whole), "resumed_from": starts[0]}


def monitored(data, start, mesh):
    """The stop rule on a held-out mse (eval_every 4, patience 3, restore_best)
    on ``mesh``, against one device; chunked and resumed from a checkpoint
    on the mesh, against one mesh call."""
    import tempfile

    held_x, held_y = fsgd.lesson_data(jax.random.key(7), n=30, dtype=jnp.float64)
    kwargs = {"steps": 400, "lr": 0.2, "batch_size": 5, "key": jax.random.key(3),
              "rows": fsgd.Shuffled(), "evaluation": fsgd.Evaluation(lambda a, x, y: {"mse": fsgd.linear_mse(a, x, y)}, (held_x, held_y), every=4, monitor="mse", patience=3, restore_best=True)}
    one = fit(data, start, **kwargs)
    many = fit(data, start, run=fsgd.Run(mesh=mesh), **kwargs)
    chunked = fit(data, start, run=fsgd.Run(chunk_size=30, mesh=mesh), **kwargs)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "run.npz")

        def crash(result):
            raise KeyboardInterrupt

        try:
            fit(data, start, run=fsgd.Run(chunk_size=30, on_chunk=crash, checkpoint=path, mesh=mesh),
                **kwargs)
        except KeyboardInterrupt:
            pass
        resumed = fit(data, start, run=fsgd.Run(chunk_size=30, checkpoint=path, mesh=mesh), **kwargs)
    made = np.asarray(one.eval_steps) >= 0

    def error(a, b):
        return max(max_relative_error(a.params, b.params),
                   max_relative_error(np.asarray(a.evals["mse"])[made],
                                      np.asarray(b.evals["mse"])[made]))

    return {"steps": [int(r.steps_run) for r in (one, many, chunked, resumed)],
            "eval_steps_equal": all(np.array_equal(r.eval_steps, one.eval_steps)
                                    for r in (many, chunked, resumed)),
            "vs-one-device": error(many, one),
            "chunked-vs-one-call": error(chunked, many),
            "resumed-vs-one-call": error(resumed, many)}


def extras():
    """A 2 x 4 mesh with optax momentum, a trajectory, chunks, a stop rule and a
    checkpoint."""
    import optax
    x, y, start = lesson(37)
    mesh = mesh_of((2, 4), ("hosts", "data"))
    kwargs = dict(lr=None, optimizer=optax.sgd(0.05, momentum=0.9), batch_size=5,
                  key=jax.random.key(3))
    recorded = {"record_params": True}
    one = fit((x, y), start, run=fsgd.Run(**recorded), **kwargs)
    many = fit((x, y), start, run=fsgd.Run(mesh=mesh, **recorded), **kwargs)
    chunked = fit((x, y), start, run=fsgd.Run(chunk_size=STEPS // 2, mesh=mesh, **recorded),
                  **kwargs)
    stop_one = fit((x, y), start, steps=500, stop=fsgd.Stop(tol=0.1))
    stop_many = fit((x, y), start, steps=500, stop=fsgd.Stop(tol=0.1), run=fsgd.Run(mesh=mesh))
    fit((x, y), start, run=fsgd.Run(mesh=mesh, **recorded), **kwargs).params.block_until_ready()
    with count_compilations() as compiled:
        again = fit((x * 0.5, y), start * 2, run=fsgd.Run(mesh=mesh, **recorded),
                    **{**kwargs, "key": jax.random.key(4)})
        again.params.block_until_ready()
    # resumed_on_mesh records no params: a checkpoint does not store the trajectory
    return {
        "2x4-checkpoint-resumed": resumed_on_mesh((x, y), start, mesh, **kwargs),
        "2x4-momentum": max_relative_error(many, one),
        "2x4-chunks-vs-one-call": max_relative_error(chunked, many),
        "2x4-tol-steps": [int(stop_many.steps_run), int(stop_one.steps_run)],
        "2x4-tol": max_relative_error(stop_many.losses, stop_one.losses),
        "2x4-recompiles": compiled[0],
        "2x4-monitor": monitored((x, y), start, mesh),
    }


def main():
    with jax.enable_x64(True), jax.numpy_rank_promotion("raise"), \
            jax.numpy_dtype_promotion("strict"):
        report = {"device_count": jax.device_count()}
        for mesh, modes in MESHES.items():
            devices, n = map(int, mesh.split("/"))
            report[mesh] = agreement(n, devices, modes)
        report["extras"] = extras()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
