"""What evaluating held-out data inside the loop costs: ``fit(evaluate=...)``.

    python bench/evaluate_overhead.py --rounds 61   # ~2 minutes on 2 cores
    python bench/evaluate_overhead.py --quick       # a small size, once (a smoke run)
    python bench/evaluate_overhead.py --kernels     # and the evaluation's kernels, profiled

One mini-batch run of a linear classifier (shuffled epochs) evaluated after
every epoch, timed side by side with what it is compared to:

* ``fit``: no evaluation (the plain compiled scan);
* ``fit(evaluate=...)``: accuracy and loss on held-out data after every
  epoch, inside the compiled loop;
* ``fit(evaluate=bias)``: the same run structure (periods of an epoch, each
  ending in an evaluation slot) with next to no evaluation work: the params'
  bias, no held-out data. This, not plain ``fit``, is "the same run without
  it": the periods draw and gather their batches an epoch at a time, which is
  not what the plain scan does (see below);
* the evaluations' own work, two ways (both one compiled loop of ten
  evaluations on params that change each time, so none is skipped):
  - *warm*: the evaluations back to back. The 2 MiB of held-out rows stay
    in the cache from one evaluation to the next, so each reads them at
    cache speed. A run never does that: between two evaluations it streams
    an epoch of training rows through the cache;
  - *after an epoch's traffic* (the fair measure, the target's
    denominator): each evaluation follows the memory traffic of an epoch of
    the run's training (that epoch's batches gathered from the training
    rows, as the run gathers them, and read once), and the same loop of
    traffic alone is subtracted. This is the work an evaluation does at the
    point of the run where it is made, and nothing of the loop that makes
    it. A per-kernel profile (``jax.profiler``) shows why it matters: the
    held-out product ``x @ w`` takes ~24 us warm and ~100-150 us both inside
    the loop and alone after the traffic (the rows come from memory);
* ``on_chunk``: ``fit(chunk_size=epoch, on_chunk=...)`` evaluating the same
  way on the host side of every chunk (a jitted call and a sync an epoch).

Each is warmed up first, every result is ``block_until_ready``-ed, they
alternate round by round (in a new seeded order each round) and the medians
are compared in one run. Targets: ``fit(evaluate=...) - fit(evaluate=bias)``
is at most 1.1 times the evaluations' own work (after an epoch's traffic),
and the ``on_chunk`` callback is slower than ``fit(evaluate=...)``.

Plain ``fit`` gathered all its batches (2,560 of 64 rows, 42 MiB here)
before one scan, and ran ~2x slower than the periods, which gather an epoch
(4 MiB) at a time: that buffer is fresh memory on every call and does not
stay in the cache (the gather alone took ~5x as long per row). It now
gathers a block of 4 MiB at a time too (``SpeedPlan.gather_block_bytes``,
``core/_blocks.py``), and the two structures run at the same speed.

Where the evaluation's time goes inside the loop (``--kernels``: per-kernel
durations from ``jax.profiler``; the HLO of the evaluation is the same in the loop and alone, and
holds no copy of the held-out data): the product ``x @ w`` over the held-out
rows takes ~24 us warm, ~100-130 us alone after an epoch's traffic, and
~120-150 us inside the loop; XLA's YNNPACK reduction of the loss
(``ynn_fusion``, reading ``y`` and two 8,192-float temporaries) takes
~1-3 us alone, warm or not, and 30-40 us inside the loop (not understood;
with ``xla_cpu_experimental_ynn_fusion_type=""`` the loss is reduced by
XLA's own kernels, ~7 us). The rest of the evaluation's kernels take the
same time in both.
"""

import argparse
import functools
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import functional_sgd as fsgd  # noqa: E402

SIZES = {"quick": {"n": 2048, "valid": 512, "d": 32, "batch": 64, "epochs": 4},
         "full": {"n": 16384, "valid": 8192, "d": 64, "batch": 64, "epochs": 10}}
TARGET_OVER_OWN_WORK = 1.10


def loss(params, x, y):
    return fsgd.binary_cross_entropy(x @ params[0] + params[1], y)


def scores(params, x, y):
    logits = x @ params[0] + params[1]
    return {"accuracy": ((logits > 0) == (y == 1)).mean(dtype=logits.dtype),
            "loss": fsgd.binary_cross_entropy(logits, y)}


def bias(params):
    return {"bias": params[1]}


def problem(n, valid, d):
    x = jax.random.normal(jax.random.key(0), (n + valid, d))
    w = jax.random.normal(jax.random.key(1), (d,))
    noise = jax.random.normal(jax.random.key(2), (n + valid,))
    y = (x @ w + noise > 0).astype(jnp.float32)
    params = (jnp.zeros(d), jnp.zeros(()))
    return params, (x[:n], y[:n]), (x[n:], y[n:])


def epoch_traffic(train, epoch_rows):
    """The memory traffic of an epoch of training, without its arithmetic:
    the epoch's batches gathered from the training rows into a buffer (the
    barrier keeps the gather from fusing into the sum, as the run writes
    it) and read once."""
    batches = jax.lax.optimization_barrier(tuple(a[epoch_rows] for a in train))
    return sum(b.sum() for b in batches)


def evaluations(params, train, valid, rows, *, traffic, evaluate):
    """One evaluation an epoch (params moved a little each time, so none is
    skipped), each after an epoch's ``traffic`` if asked; a checksum."""
    def epoch(i, total):
        if traffic:
            total = total + epoch_traffic(train, rows[i]) * 1e-9
        if evaluate:
            moved = jax.tree.map(lambda p: p + i.astype(p.dtype) * 1e-3, params)
            values = scores(moved, *valid)
            total = total + values["loss"] + values["accuracy"]
        return total

    return jax.lax.fori_loop(0, rows.shape[0], epoch, jnp.zeros(()))


def methods(size):
    params, train, valid = problem(size["n"], size["valid"], size["d"])
    per_epoch = size["n"] // size["batch"]
    steps, epochs = per_epoch * size["epochs"], size["epochs"]
    common = {"lr": 0.1, "steps": steps, "batch_size": size["batch"],
              "key": jax.random.key(3), "replace": False}
    evaluated = jax.jit(scores)

    def plain():
        return jax.block_until_ready(fsgd.fit(loss, params, train, **common).params)

    def in_loop():
        result = fsgd.fit(loss, params, train, evaluate=scores, eval_data=valid, **common)
        return jax.block_until_ready((result.params, result.evals))

    def periods_alone():
        result = fsgd.fit(loss, params, train, evaluate=bias, eval_every=per_epoch, **common)
        return jax.block_until_ready((result.params, result.evals))

    rows = fsgd.sample_indices(common["key"], size["n"], steps, size["batch"], replace=False)
    rows = rows.reshape(epochs, per_epoch, size["batch"])
    warm, after_traffic, traffic_alone = (
        jax.jit(functools.partial(evaluations, traffic=t, evaluate=e))
        for t, e in ((False, True), (True, True), (True, False)))

    def evaluations_warm():
        return jax.block_until_ready(warm(params, train, valid, rows))

    def evaluations_after_traffic():
        return jax.block_until_ready(after_traffic(params, train, valid, rows))

    def traffic_only():
        return jax.block_until_ready(traffic_alone(params, train, valid, rows))

    def callback():
        curve = []
        result = fsgd.fit(loss, params, train, chunk_size=per_epoch, **common,
                          on_chunk=lambda chunk: curve.append(
                              jax.block_until_ready(evaluated(chunk.params, *valid))))
        return jax.block_until_ready(result.params), curve

    return {"fit": plain, "fit(evaluate=...)": in_loop, "fit(evaluate=bias)": periods_alone,
            "evaluations alone, warm": evaluations_warm,
            "evaluations alone, each after an epoch's traffic": evaluations_after_traffic,
            "an epoch's traffic alone, x10": traffic_only, "on_chunk callback": callback}


def measure(runs, rounds):
    """Median seconds per method, alternating round by round; first calls apart.

    Each round runs the methods in a new (seeded) order: on 2 cores the call
    right after a plain ``fit`` that gathered all its batches (~42 MiB) was
    measured 4-5 ms slower, whichever method it was, so a fixed order
    charged that to the method after it."""
    first = {}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        first[name] = time.perf_counter() - start
    times = {name: [] for name in runs}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(list(runs), len(runs)):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return medians, first, times


def paired(times, minuend, subtrahend):
    """The median over rounds of ``minuend - subtrahend`` timed in the same
    round: steadier than a difference of medians on a shared machine."""
    return statistics.median(a - b for a, b in zip(times[minuend], times[subtrahend]))


def report(size_name, medians, first, size, times):
    plain, inside = medians["fit"], medians["fit(evaluate=...)"]
    periods, callback = medians["fit(evaluate=bias)"], medians["on_chunk callback"]
    warm = medians["evaluations alone, warm"]
    own = paired(times, "evaluations alone, each after an epoch's traffic",
                 "an epoch's traffic alone, x10")
    added = paired(times, "fit(evaluate=...)", "fit(evaluate=bias)")
    print(f"\n### {size_name}: {size['n']} rows x {size['d']}, batches of {size['batch']}, "
          f"{size['epochs']} epochs, {size['valid']} held-out rows evaluated every epoch\n")
    print("| method | median | first call (compile + run) |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.2f} ms | {first[name] * 1e3:.0f} ms |")
    print("\n(differences: medians over rounds of the two methods' times in the same round)")
    print(f"the evaluations' own work, after an epoch's traffic: {own * 1e3:.2f} ms "
          f"(warm, back to back: {warm * 1e3:.2f} ms)")
    if own <= 0:  # too small to tell from the traffic's noise (the quick size)
        own = float("nan")
    print(f"fit(evaluate=...) - fit(evaluate=bias): {added * 1e3:+.2f} ms = "
          f"{added / own:.2f}x the own work (target <= {TARGET_OVER_OWN_WORK:.2f}: "
          f"{'met' if added <= TARGET_OVER_OWN_WORK * own else 'MISSED'}); "
          f"{added / warm:.2f}x the warm figure")
    print(f"fit(evaluate=...) - fit: {(inside - plain) * 1e3:+.2f} ms (the periods without "
          f"evaluation: {periods / plain:.2f}x plain fit)")
    print(f"on_chunk callback / fit(evaluate=...): {callback / inside:.2f}x "
          f"(target > 1: {'met' if callback > inside else 'MISSED'})")
    return {"evaluations_over_own_work": added / own, "evaluations_over_warm": added / warm,
            "callback_over_in_loop": callback / inside, "periods_over_plain": periods / plain}


KERNELS = ("dot", "ynn_fusion", "add_select", "convert_convert", "broadcast_add",
           "multiply_subtract", "wrapped_reduce")
"""Name prefixes of the evaluation's kernels in XLA:CPU's programs here (and
of other kernels; those that run once an epoch are the evaluation's)."""


def kernels(runs, epochs, calls=10):
    """Median duration of each kernel that runs once an epoch, from
    ``jax.profiler`` (XLA:CPU records every kernel it runs), for the in-loop
    evaluation and the evaluations alone."""
    from jax._src import profiler

    print("\nkernels run once an epoch, median us (jax.profiler):")
    for name in ("fit(evaluate=...)", "evaluations alone, warm",
                 "evaluations alone, each after an epoch's traffic"):
        session = profiler._profiler.ProfilerSession()
        for _ in range(calls):
            runs[name]()
        found = {}
        for plane in profiler.ProfileData.from_serialized_xspace(session.stop()).planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name.startswith(KERNELS):
                        found.setdefault(event.name, []).append(event.duration_ns / 1e3)
        print(f"  {name}: " + ", ".join(
            f"{kernel} {statistics.median(us):.1f}" for kernel, us in sorted(found.items())
            if len(us) == calls * epochs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, once (smoke)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--kernels", action="store_true",
                        help="also profile the evaluation's kernels (in the loop and alone)")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full"
    size = SIZES[name]
    runs = methods(size)
    medians, first, times = measure(runs, 1 if args.quick else args.rounds)
    ratios = report(name, medians, first, size, times)
    if args.kernels:
        kernels(runs, size["epochs"])
    return ratios


if __name__ == "__main__":
    main()
