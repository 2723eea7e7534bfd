"""``python bench/host_data.py``: data that does not sit in one array, timed.

Side by side in one run, on the mini-batch workload (1e5 x 10, batches of
64, float32):

* a stream of ready-made batches (block 256) against ``fit`` on the same
  rows in memory (``indices``), and against an optax jitted step called per
  batch in Python over the same iterator;
* a shuffled epoch (``replace=False``, the keyed bijection) against an epoch
  of independent draws (``replace=True``), and against a ragged epoch
  (``drop_last=False``: one step more, of the 32 rows left over);
* ``sample_indices(replace=False)`` for n = 1e6 against
  ``jax.random.permutation``;
* with ``--memmap-gb G``: a memmap of G GB trained for 2,000 mini-batch steps
  in a child process, its peak resident memory, and its bits against the
  same run on an in-memory slice of the rows it touched.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from bench.timing import median_seconds

N, D, BATCH, LR = 100_000, 10, 64, 0.01


def problem(steps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ rng.normal(size=D).astype(np.float32)).astype(np.float32)
    rows = np.asarray(fsgd.sample_indices(jax.random.key(1), N, steps, BATCH))
    return x, y, rows


def streams(budget):
    steps = N // BATCH
    x, y, rows = problem(steps)
    batches = [(x[r], y[r]) for r in rows]  # ready-made, as a loader would hand them
    start = jnp.zeros(D)
    import optax
    optimizer = optax.sgd(LR)

    @jax.jit
    def step(params, state, xb, yb):
        value, grads = jax.value_and_grad(fsgd.linear_mse)(params, xb, yb)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    def optax_loop():
        params, state = start, optimizer.init(start)
        for xb, yb in batches:
            params, state, _ = step(params, state, xb, yb)
        return jax.block_until_ready(params)

    runs = {
        "fit, in memory (indices)": lambda: jax.block_until_ready(
            fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, indices=rows).params),
        "fit(stream(batches), block=256)": lambda: jax.block_until_ready(
            fsgd.fit(fsgd.linear_mse, start, fsgd.stream(iter(batches), block=256),
                     lr=LR).params),
        "optax jitted step, Python loop": optax_loop,
    }
    return {name: median_seconds(run, budget=budget) for name, run in runs.items()}, steps


def epochs(budget):
    x, y, _ = problem(1)
    start, key = jnp.zeros(D), jax.random.key(2)
    steps = N // BATCH
    runs = {f"epoch, replace={replace}": (lambda replace=replace: jax.block_until_ready(
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=steps, batch_size=BATCH,
                 key=key, replace=replace).params)) for replace in (True, False)}
    runs["epoch, replace=False, drop_last=False"] = lambda: jax.block_until_ready(
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=-(-N // BATCH),
                 batch_size=BATCH, key=key, replace=False, drop_last=False).params)
    key = jax.random.key(0)
    n = 1_000_000
    runs["sample_indices(n=1e6, replace=False), one epoch"] = lambda: jax.block_until_ready(
        fsgd.sample_indices(key, n, n // 1000, 1000, replace=False))
    runs["jax.random.permutation(n=1e6)"] = lambda: jax.block_until_ready(
        jax.random.permutation(key, n))
    return {name: median_seconds(run, budget=budget) for name, run in runs.items()}


CHILD = """
import resource, sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
import functional_sgd as fsgd
x = np.memmap({x!r}, np.float32, "r", shape=({n}, {d}))
y = np.memmap({y!r}, np.float32, "r", shape=({n},))
rows = np.asarray(fsgd.sample_indices(jax.random.key(1), {n}, 2000, 64))
result = fsgd.fit(fsgd.linear_mse, jnp.zeros({d}), (x, y), lr=0.01, indices=rows)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
used = np.unique(rows)
small = fsgd.fit(fsgd.linear_mse, jnp.zeros({d}), (np.asarray(x[used]), np.asarray(y[used])),
                 lr=0.01, indices=np.searchsorted(used, rows).astype(np.int32))
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(small)))
print(peak, same)
"""


def memmap(gigabytes):
    d = 64
    n = int(gigabytes * 2**30 / (4 * (d + 1)))
    with tempfile.TemporaryDirectory() as folder:
        xs, ys = os.path.join(folder, "x"), os.path.join(folder, "y")
        x = np.memmap(xs, np.float32, "w+", shape=(n, d))
        y = np.memmap(ys, np.float32, "w+", shape=(n,))
        rng = np.random.default_rng(0)
        for first in range(0, n, 1 << 20):
            rows = slice(first, min(n, first + (1 << 20)))
            x[rows] = rng.normal(size=(rows.stop - rows.start, d)).astype(np.float32)
            y[rows] = x[rows] @ np.ones(d, np.float32)
        x.flush(), y.flush()
        del x, y
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD.format(
            root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), x=xs, y=ys, n=n,
            d=d)], capture_output=True, text=True, check=True)
        peak, same = done.stdout.split()
        return n, d, int(peak), same == "True", time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per timed case")
    parser.add_argument("--memmap-gb", type=float, default=0, help="size of the memmap run")
    args = parser.parse_args(argv)
    times, steps = streams(args.budget)
    print(f"## Streams: an epoch of {steps} batches of {BATCH} rows from {N} x {D}\n")
    base = times["fit, in memory (indices)"]
    for name, seconds in times.items():
        print(f"- {name}: {seconds * 1e3:.1f} ms, {base / seconds:.2f}x in-memory fit")
    stream = times["fit(stream(batches), block=256)"]
    print(f"- stream vs optax loop: {times['optax jitted step, Python loop'] / stream:.1f}x\n")
    times = epochs(args.budget)
    print("## Shuffled epochs\n")
    for name, seconds in times.items():
        print(f"- {name}: {seconds * 1e3:.1f} ms")
    print(f"- shuffled / independent epoch: "
          f"{times['epoch, replace=False'] / times['epoch, replace=True']:.2f}x")
    ragged = times["epoch, replace=False, drop_last=False"] / (N // BATCH + 1)
    shuffled = times["epoch, replace=False"] / (N // BATCH)
    print(f"- ragged / shuffled epoch, per step: {ragged / shuffled:.2f}x")
    permutation = times["jax.random.permutation(n=1e6)"]
    bijection = times["sample_indices(n=1e6, replace=False), one epoch"]
    print(f"- permutation / sample_indices: {permutation / bijection:.0f}x\n")
    if args.memmap_gb:
        n, d, peak, same, seconds = memmap(args.memmap_gb)
        print(f"## A memmap of {args.memmap_gb:g} GB ({n} x {d} float32), 2,000 steps of 64\n")
        print(f"- peak resident memory {peak / 2**20:.0f} MiB; bits equal to the in-memory "
              f"slice: {same}; {seconds:.1f} s including start-up")


if __name__ == "__main__":
    main()
