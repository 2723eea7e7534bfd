"""What evaluating held-out data inside the loop costs: ``fit(evaluate=...)``.

    python bench/evaluate_overhead.py            # ~1 minute on 2 cores
    python bench/evaluate_overhead.py --quick    # a small size, once (a smoke run)

One mini-batch run of a linear classifier (shuffled epochs), four ways:

* ``fit``: no evaluation (the plain compiled scan);
* ``fit(evaluate=...)``: accuracy and loss on held-out data after every
  epoch, inside the compiled loop;
* the evaluation's own work: the same number of evaluations, in one
  compiled loop of their own (on params that change each time, so none is
  skipped);
* ``on_chunk``: ``fit(chunk_size=epoch, on_chunk=...)`` evaluating the same
  way on the host side of every chunk (a jitted call and a sync an epoch).

Each is warmed up first, every result is ``block_until_ready``-ed, they
alternate round by round (in a new seeded order each round) and the medians
are compared in one run. Targets: ``fit(evaluate=...)`` takes at most
``fit`` plus 1.1 times the evaluations' own work, and beats the ``on_chunk``
callback.

The periods of an evaluated run draw and gather their batches as chunks of
an epoch do; the plain run gathers all its batches before its one scan (up
to ``SpeedPlan.pregather_bytes``), which on 2 cores was measured slower than
an epoch at a time: there, the evaluated run is the faster one.
"""

import argparse
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

    @jax.jit
    def own_work(params, valid):
        def body(i, total):
            shifted = jax.tree.map(lambda p: p + i.astype(p.dtype) * 1e-3, params)
            return total + scores(shifted, *valid)["loss"]

        return jax.lax.fori_loop(0, epochs, body, jnp.zeros(()))

    def evaluations_alone():
        return jax.block_until_ready(own_work(params, valid))

    def callback():
        curve = []
        result = fsgd.fit(loss, params, train, chunk_size=per_epoch, **common,
                          on_chunk=lambda chunk: curve.append(
                              jax.block_until_ready(evaluated(chunk.params, *valid))))
        return jax.block_until_ready(result.params), curve

    return {"fit": plain, "fit(evaluate=...)": in_loop, "fit(evaluate=bias)": periods_alone,
            "the evaluations alone": evaluations_alone, "on_chunk callback": callback}


def measure(runs, rounds):
    """Median seconds per method, alternating round by round; first calls apart.

    Each round runs the methods in a new (seeded) order: on 2 cores the call
    right after the plain ``fit`` (which gathers all its batches, ~42 MiB)
    was measured 4-5 ms slower, whichever method it was, so a fixed order
    charged that to ``fit(evaluate=...)``."""
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
    return {name: statistics.median(t) for name, t in times.items()}, first


def report(size_name, medians, first, size):
    plain, inside = medians["fit"], medians["fit(evaluate=...)"]
    own, callback = medians["the evaluations alone"], medians["on_chunk callback"]
    added = inside - plain  # below 0 when the periods run faster than the whole scan
    print(f"\n### {size_name}: {size['n']} rows x {size['d']}, batches of {size['batch']}, "
          f"{size['epochs']} epochs, {size['valid']} held-out rows evaluated every epoch\n")
    print("| method | median | first call (compile + run) |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.2f} ms | {first[name] * 1e3:.0f} ms |")
    print(f"\nfit(evaluate=...) - fit: {added * 1e3:+.2f} ms; the evaluations alone: "
          f"{own * 1e3:.2f} ms; (fit(evaluate=...) - fit) / own work: {added / own:+.2f} "
          f"(target <= {TARGET_OVER_OWN_WORK:.2f})")
    periods = medians["fit(evaluate=bias)"]
    print(f"fit(evaluate=...) - fit(evaluate=bias): {(inside - periods) * 1e3:+.2f} ms, "
          f"{(inside - periods) / own:+.2f} times the evaluations' own work (the periods "
          f"without it: {periods / plain:.2f}x fit)")
    print(f"on_chunk callback / fit(evaluate=...): {callback / inside:.2f}x "
          "(target > 1)")
    return {"added_over_own_work": added / own, "callback_over_in_loop": callback / inside,
            "evaluations_over_own_work": (inside - periods) / own}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small size, once (smoke)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full"
    size = SIZES[name]
    medians, first = measure(methods(size), 1 if args.quick else args.rounds)
    return report(name, medians, first, size)


if __name__ == "__main__":
    main()
