"""``python bench/investigations/host_data.py``: data that does not sit in one array, timed.

Side by side in one run, on the mini-batch workload (1e5 x 10, batches of
64, float32):

* a stream of ready-made batches (block 256) against ``fit`` on the same
  rows in memory (``indices``), and against an optax jitted step called per
  batch in Python over the same iterator; the stream's host reading alone
  and its training alone (the blocks ready) say how much of the reading the
  training hides;
* a shuffled epoch (``replace=False``, the keyed bijection) against an epoch
  of independent draws (``replace=True``), and against a ragged epoch
  (``drop_last=False``: one step more, of the 32 rows left over);
* ``sample_indices(replace=False)`` for n = 1e6 against
  ``jax.random.permutation``;
* with ``--memmap-gb G``: a memmap of G GB trained for 2,000 mini-batch steps
  in a child process, its peak resident memory (``VmHWM``), its bits against
  the same run on an in-memory copy of the rows it touched, and the warm
  call's time against the same run on a memmap of 1/64 the rows (a cost
  that grew with the array would show there).

Methods are timed in turns (one call of each, round after round) and the
median of each is kept: on a shared machine, load then falls on all alike.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from functional_sgd.core import Inputs, LoopSpec, initialize, run
from functional_sgd.core._batches import Stacked
from functional_sgd.drivers import stream_blocks

N, D, BATCH, LR = 100_000, 10, 64, 0.01


def problem(steps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ rng.normal(size=D).astype(np.float32)).astype(np.float32)
    rows = np.asarray(fsgd.sample_indices(jax.random.key(1), N, steps, BATCH))
    return x, y, rows


def in_turns(runs, budget):
    """Median seconds of each of ``runs``, called in turns for about
    ``budget`` seconds each (after two warm calls of each)."""
    for call in runs.values():
        call(), call()
    times = {name: [] for name in runs}
    end = time.perf_counter() + budget * len(runs)
    while time.perf_counter() < end or min(map(len, times.values())) < 5:
        for name, call in runs.items():
            began = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - began)
    return {name: float(np.median(t)) for name, t in times.items()}


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

    ready = list(stream_blocks(iter(batches), 256, None, True))
    spec = LoopSpec(fsgd.linear_mse, batches=Stacked(BATCH))
    carry = initialize(spec, start, None, 0, np.float32)

    def training_only():
        state = carry
        for data, length, _ in ready:
            state, _ = run(LoopSpec(fsgd.linear_mse, batches=Stacked(BATCH), steps=length),
                           state, Inputs(data, LR, None, None, None, None))
        return jax.block_until_ready(state.params)

    streamed = fsgd.fit(fsgd.linear_mse, start, fsgd.stream(iter(batches), block=256), lr=LR)
    in_memory = fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, rows=fsgd.Schedule(rows))
    same = bool(np.array_equal(streamed.params, in_memory.params))
    runs = {
        "fit, in memory (indices)": lambda: jax.block_until_ready(
            fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, rows=fsgd.Schedule(rows)).params),
        "fit(stream(batches), block=256)": lambda: jax.block_until_ready(
            fsgd.fit(fsgd.linear_mse, start, fsgd.stream(iter(batches), block=256),
                     lr=LR).params),
        "optax jitted step, Python loop": optax_loop,
        "the stream's host reading alone": lambda: list(
            stream_blocks(iter(batches), 256, None, True)),
        "the stream's training alone (blocks ready)": training_only,
    }
    return in_turns(runs, budget), steps, same


def epochs(budget):
    x, y, _ = problem(1)
    start, key = jnp.zeros(D), jax.random.key(2)
    steps = N // BATCH
    runs = {f"epoch, replace={replace}": (lambda replace=replace: jax.block_until_ready(
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=steps, batch_size=BATCH,
                 key=key, rows=(fsgd.Shuffled() if not replace else fsgd.Sampled())).params)) for replace in (True, False)}
    runs["epoch, replace=False, drop_last=False"] = lambda: jax.block_until_ready(
        fsgd.fit(fsgd.linear_mse, start, (x, y), lr=LR, steps=-(-N // BATCH),
                 batch_size=BATCH, key=key, rows=fsgd.Shuffled(drop_last=False)).params)
    times = in_turns(runs, budget)
    key = jax.random.key(0)
    n = 1_000_000
    runs = {"sample_indices(n=1e6, replace=False), one epoch": lambda: jax.block_until_ready(
        fsgd.sample_indices(key, n, n // 1000, 1000, replace=False)),
        "jax.random.permutation(n=1e6)": lambda: jax.block_until_ready(
            jax.random.permutation(key, n))}
    return {**times, **in_turns(runs, budget)}


CHILD = """
import sys, time, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
import functional_sgd as fsgd
def peak_bytes():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM"))
n = {n}
x = np.memmap({x!r}, np.float32, "r", shape=(n, {d}))
y = np.memmap({y!r}, np.float32, "r", shape=(n,))
rows = np.asarray(fsgd.sample_indices(jax.random.key(1), n, 2000, 64))
run = lambda: fsgd.fit(fsgd.linear_mse, jnp.zeros({d}), (x, y), lr=0.01, rows=fsgd.Schedule(rows))
began = time.perf_counter(); result = jax.block_until_ready(run())
first = time.perf_counter() - began
began = time.perf_counter(); jax.block_until_ready(run()); warm = time.perf_counter() - began
peak = peak_bytes()
used = np.unique(rows)  # the rows trained on, copied into memory (after the peak is read)
small = fsgd.fit(fsgd.linear_mse, jnp.zeros({d}), (np.asarray(x[used]), np.asarray(y[used])),
                 lr=0.01, rows=fsgd.Schedule(np.searchsorted(used, rows).astype(np.int32)))
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(small)))
print(peak, same, first, warm)
"""


def memmap(gigabytes):
    """Two memmaps, of ``gigabytes`` and of 1/64 the rows, each trained in a child
    process (1/64 or 1,024 rows, the more): ``{rows: (peak bytes, bits equal, first s,
    warm s)}``."""
    d = 64
    n = int(gigabytes * 2**30 / (4 * (d + 1)))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for rows_n in (n, max(n // 64, 1024)):
            xs, ys = os.path.join(folder, f"x{rows_n}"), os.path.join(folder, f"y{rows_n}")
            x = np.memmap(xs, np.float32, "w+", shape=(rows_n, d))
            y = np.memmap(ys, np.float32, "w+", shape=(rows_n,))
            rng = np.random.default_rng(0)
            for first in range(0, rows_n, 1 << 20):
                rows = slice(first, min(rows_n, first + (1 << 20)))
                x[rows] = rng.normal(size=(rows.stop - rows.start, d)).astype(np.float32)
                y[rows] = x[rows] @ np.ones(d, np.float32)
            x.flush(), y.flush()
            del x, y
            done = subprocess.run([sys.executable, "-c", CHILD.format(
                root=root, x=xs, y=ys, n=rows_n, d=d)], capture_output=True, text=True,
                check=True)
            peak, same, first, warm = done.stdout.split()
            out[rows_n] = int(peak), same == "True", float(first), float(warm)
            os.remove(xs), os.remove(ys)
    return d, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per timed case")
    parser.add_argument("--memmap-gb", type=float, default=0, help="size of the memmap run")
    args = parser.parse_args(argv)
    times, steps, same = streams(args.budget)
    print(f"## Streams: an epoch of {steps} batches of {BATCH} rows from {N} x {D}\n")
    base = times["fit, in memory (indices)"]
    for name, seconds in times.items():
        print(f"- {name}: {seconds * 1e3:.2f} ms, {base / seconds:.2f}x in-memory fit")
    stream = times["fit(stream(batches), block=256)"]
    reading = times["the stream's host reading alone"]
    training = times["the stream's training alone (blocks ready)"]
    print(f"- stream / in-memory fit speed: {base / stream:.2f}x (goal >= 0.8x); "
          f"stream vs optax loop: {times['optax jitted step, Python loop'] / stream:.1f}x "
          f"(goal >= 2x); bits equal to the in-memory run: {same}")
    hidden = max(0.0, reading + training - stream)
    print(f"- reading hidden behind training: {hidden * 1e3:.2f} of {reading * 1e3:.2f} ms\n")
    times = epochs(args.budget)
    print("## Shuffled epochs\n")
    for name, seconds in times.items():
        print(f"- {name}: {seconds * 1e3:.1f} ms")
    print(f"- shuffled / independent epoch: "
          f"{times['epoch, replace=False'] / times['epoch, replace=True']:.2f}x (goal <= 1.25x)")
    ragged = times["epoch, replace=False, drop_last=False"] / (N // BATCH + 1)
    shuffled = times["epoch, replace=False"] / (N // BATCH)
    print(f"- ragged / shuffled epoch, per step: {ragged / shuffled:.2f}x")
    permutation = times["jax.random.permutation(n=1e6)"]
    bijection = times["sample_indices(n=1e6, replace=False), one epoch"]
    print(f"- permutation / sample_indices: {permutation / bijection:.0f}x (goal >= 20x)\n")
    if args.memmap_gb:
        d, runs = memmap(args.memmap_gb)
        (n, big), (_, small) = sorted(runs.items(), reverse=True)
        print(f"## A memmap of {args.memmap_gb:g} GB ({n} x {d} float32), 2,000 steps of 64\n")
        print(f"- peak resident memory {big[0] / 2**20:.0f} MiB (goal < 1 GiB); bits equal "
              f"to the in-memory copy of its rows: {big[1]}")
        print(f"- first call {big[2]:.2f} s, warm call {big[3]:.2f} s; on 1/64 the rows: "
              f"peak {small[0] / 2**20:.0f} MiB, warm call {small[3]:.2f} s "
              f"({big[3] / small[3]:.2f}x)")


if __name__ == "__main__":
    main()
