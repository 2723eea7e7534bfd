"""What evaluating held-out data inside the loop costs: ``fit(evaluate=...)``.

    python bench/investigations/evaluate_overhead.py --rounds 61   # ~2 minutes on 2 cores
    python bench/investigations/evaluate_overhead.py --quick       # a small size, once (a smoke run)
    python bench/investigations/evaluate_overhead.py --kernels     # and the evaluation's kernels, profiled

One mini-batch run of a linear classifier (shuffled epochs) evaluated after
every epoch, timed side by side with what it is compared to:

* ``fit``: no evaluation, "the same run without it";
* ``fit(evaluate=...)``: accuracy and loss on held-out data after every
  epoch, inside the compiled loop;
* the same run written by hand, as a JAX user would without ``fit``: one
  jitted ``lax.scan`` over epochs, each drawing its shuffled batches
  (``sample_indices``, the rows ``fit`` draws), gathering them and running a
  ``lax.scan`` of SGD steps, with and without the same evaluation at the
  end of each epoch. The benchmark checks that the hand-written runs give
  ``fit``'s params, losses and evaluations bit for bit, so the two pairs do
  the same work and differ only in ``fit``'s machinery;
* ``fit(evaluate=bias)``: the same periods with next to no evaluation work
  (the params' bias, no held-out data): what the periods cost alone;
* the evaluations alone, in one compiled loop of ten on params that change
  each time (so none is skipped): *warm* (back to back, the 2 MiB of
  held-out rows stay in the cache) and *after an epoch's traffic* (each
  after an epoch's batches are gathered from the training rows and read,
  that traffic's own time subtracted);
* ``on_chunk``: ``fit(chunk_size=epoch, on_chunk=...)`` evaluating the same
  way on the host side of every chunk (a jitted call and a sync an epoch).

Targets: what the evaluation adds to ``fit`` (``fit(evaluate=...) - fit``)
is at most 1.1 times the evaluation's own work, and the ``on_chunk``
callback is slower than ``fit(evaluate=...)``. The evaluation's own work is
what it adds to the hand-written run (``by hand + evaluation - by hand``):
the same kernels, at the same place of the same run, reading the held-out
rows from wherever a run leaves them. The stand-ins alone understate it:
after an epoch of training (~1 ms) the held-out product ``x @ w`` reads
its rows from memory, ~75-160 us in either loop (``--kernels``), against
~24 us warm and ~40 us after the stand-in traffic (which takes less time
than an epoch, so less of the cache is gone); and XLA:CPU's first YNNPACK
kernel after a stretch of small kernels (the loss's reduction) takes
~15-35 us in either loop against 1-3 us alone. Both are printed beside the
target.

Each method is warmed up first, every result is ``block_until_ready``-ed,
they alternate round by round (in a new seeded order each round), and a
difference is the median over rounds of the two methods' times in the same
round.
"""

import argparse
import functools
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd

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


def by_hand(params, train, valid, key, *, batch_size, epochs, lr, evaluate):
    """The run written by hand: a scan over epochs, each drawing its shuffled
    batches (the rows ``fit`` draws), gathering them and running a scan of
    SGD steps, then, with ``evaluate``, scoring the held-out data. Returns
    the params, every step's loss and the evaluations (or ``None``)."""
    n = train[0].shape[0]
    per_epoch = n // batch_size

    def epoch(params, e):
        rows = fsgd.sample_indices(key, n, per_epoch, batch_size, replace=False,
                                   start=e * per_epoch)
        batches = tuple(a[rows] for a in train)

        def step(params, batch):
            value, grads = jax.value_and_grad(loss)(params, *batch)
            return jax.tree.map(lambda p, g: p - jnp.asarray(lr, p.dtype) * g,
                                params, grads), value

        params, losses = jax.lax.scan(step, params, batches)
        return params, (losses, scores(params, *valid) if evaluate else None)

    params, (losses, evals) = jax.lax.scan(epoch, params, jnp.arange(epochs))
    return params, losses.reshape(-1), evals


def check_same_run(result, by_hand_out):
    """The hand-written run must be ``fit``'s run, bit for bit, or the two
    pairs would not do the same work."""
    params, losses, evals = by_hand_out
    pairs = [*zip(jax.tree.leaves(params), jax.tree.leaves(result.params)),
             (losses, result.losses),
             *((evals[k], result.evals[k]) for k in result.evals if not k.startswith("train/"))]
    same = all(np.array_equal(a, b) for a, b in pairs)
    if not same:
        raise AssertionError("the hand-written run does not give fit's params, losses and "
                             "evaluations bit for bit: the comparison would not be fair")


def methods(size):
    """``(runs, check)``: the timed methods by name, and a check that the
    hand-written run is ``fit``'s, bit for bit (made after the timing, so
    that the first calls are first calls)."""
    params, train, valid = problem(size["n"], size["valid"], size["d"])
    per_epoch = size["n"] // size["batch"]
    steps, epochs = per_epoch * size["epochs"], size["epochs"]
    common = {"lr": 0.1, "steps": steps, "batch_size": size["batch"],
              "key": jax.random.key(3), "rows": fsgd.Shuffled()}
    evaluated = jax.jit(scores)
    hand = jax.jit(functools.partial(by_hand, batch_size=size["batch"], epochs=epochs,
                                     lr=common["lr"]), static_argnames="evaluate")

    def plain():
        return jax.block_until_ready(fsgd.fit(loss, params, train, **common).params)

    def in_loop():
        result = fsgd.fit(loss, params, train, evaluation=fsgd.Evaluation(scores, valid), **common)
        return jax.block_until_ready(result)

    def periods_alone():
        result = fsgd.fit(loss, params, train, evaluation=fsgd.Evaluation(bias, every=per_epoch), **common)
        return jax.block_until_ready((result.params, result.evals))

    def hand_written():
        return jax.block_until_ready(hand(params, train, valid, common["key"], evaluate=False))

    def hand_written_evaluated():
        return jax.block_until_ready(hand(params, train, valid, common["key"], evaluate=True))

    def check():
        check_same_run(in_loop(), hand_written_evaluated())

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
        result = fsgd.fit(loss, params, train, run=fsgd.Run(chunk_size=per_epoch, on_chunk=lambda chunk: curve.append(
                              jax.block_until_ready(evaluated(chunk.params, *valid)))), **common)
        return jax.block_until_ready(result.params), curve

    return {"fit": plain, "fit(evaluate=...)": in_loop, "by hand": hand_written,
            "by hand + evaluation": hand_written_evaluated,
            "fit(evaluate=bias)": periods_alone,
            "evaluations alone, warm": evaluations_warm,
            "evaluations alone, each after an epoch's traffic": evaluations_after_traffic,
            "an epoch's traffic alone, x10": traffic_only, "on_chunk callback": callback}, check


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
    inside, callback = medians["fit(evaluate=...)"], medians["on_chunk callback"]
    added = paired(times, "fit(evaluate=...)", "fit")
    own = paired(times, "by hand + evaluation", "by hand")
    periods = paired(times, "fit(evaluate=bias)", "fit")
    after_traffic = paired(times, "evaluations alone, each after an epoch's traffic",
                           "an epoch's traffic alone, x10")
    warm = medians["evaluations alone, warm"]
    print(f"\n### {size_name}: {size['n']} rows x {size['d']}, batches of {size['batch']}, "
          f"{size['epochs']} epochs, {size['valid']} held-out rows evaluated every epoch\n")
    print("| method | median | first call (compile + run) |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.2f} ms | {first[name] * 1e3:.0f} ms |")
    print("\n(differences: medians over rounds of the two methods' times in the same round)")
    print(f"the evaluation's own work, by hand + evaluation - by hand: {own * 1e3:+.2f} ms "
          f"(the evaluations alone: {after_traffic * 1e3:.2f} ms after an epoch's traffic, "
          f"{warm * 1e3:.2f} ms warm)")
    told = own > 0  # not at the quick size: too small to tell from the noise
    if not told:
        own = float("nan")
    verdict = ("too small to tell at this size" if not told
               else "met" if added <= TARGET_OVER_OWN_WORK * own else "MISSED")
    print(f"fit(evaluate=...) - fit: {added * 1e3:+.2f} ms = {added / own:.2f}x the own work "
          f"(target <= {TARGET_OVER_OWN_WORK:.2f}: {verdict}); "
          f"{added / after_traffic:.2f}x the evaluations alone after an epoch's traffic, "
          f"{added / warm:.2f}x warm")
    print(f"fit / by hand: {medians['fit'] / medians['by hand']:.2f}x; fit(evaluate=bias) - fit: "
          f"{periods * 1e3:+.2f} ms (the periods alone)")
    print(f"on_chunk callback / fit(evaluate=...): {callback / inside:.2f}x "
          f"(target > 1: {'met' if callback > inside else 'MISSED'})")
    return {"evaluations_over_own_work": added / own,
            "evaluations_over_after_traffic": added / after_traffic,
            "evaluations_over_warm": added / warm, "callback_over_in_loop": callback / inside,
            "fit_over_by_hand": medians["fit"] / medians["by hand"]}


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
    for name in ("fit(evaluate=...)", "by hand + evaluation", "evaluations alone, warm",
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
    runs, check = methods(size)
    medians, first, times = measure(runs, 1 if args.quick else args.rounds)
    check()
    ratios = report(name, medians, first, size, times)
    if args.kernels:
        kernels(runs, size["epochs"])
    return ratios


if __name__ == "__main__":
    main()
