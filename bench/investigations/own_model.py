"""A user's own model through fit: an equinox MLP, against the loops people write.

    python bench/investigations/own_model.py            # two sizes, ~1 minute on 2 cores
    python bench/investigations/own_model.py --quick    # the small one, once (a smoke run)

The same run three ways, on the same mini-batches (an ``indices`` schedule)
with ``optax.adam``:

* ``fit``: the equinox ``MLP`` passed as ``params`` (its activation
  functions pass through; only its float arrays train);
* a hand-written ``jax.lax.scan`` of the same step (``eqx.partition`` once,
  ``jax.value_and_grad`` of the combined model, ``optax`` update), jitted
  whole: what ``fit`` should cost at most;
* the ``eqx.filter_jit`` Python loop of equinox's examples, one dispatch a
  step.

Each is warmed up first (compile time is printed apart), every result is
``block_until_ready``-ed, the three alternate round by round and the medians
are compared in one run. Prints a Markdown table per size with the ratios
side by side: a large run, where the step's arithmetic dominates, and a small
one, where what ``fit`` does on the host per call (checks, flattening the
module) shows.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import functional_sgd as fsgd  # noqa: E402


def loss(model, x, y):
    return ((jax.vmap(model)(x) - y) ** 2).mean()


def problem(n, d, width, depth, steps, batch_size):
    x = jax.random.normal(jax.random.key(0), (n, d))
    y = jnp.sin(x).sum(axis=1, keepdims=True)
    model = eqx.nn.MLP(d, 1, width, depth, key=jax.random.key(1))
    indices = fsgd.sample_indices(jax.random.key(2), n, steps, batch_size)
    return model, x, y, indices


def with_fit(model, x, y, indices, optimizer):
    def run():
        result = fsgd.fit(loss, model, (x, y), rows=fsgd.Schedule(indices), optimizer=optimizer)
        return jax.block_until_ready((result.params, result.losses))
    return run


def with_scan(model, x, y, indices, optimizer):
    trainable, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def train(trainable, x, y, indices):
        def step(carry, rows):
            params, opt_state = carry
            value, grads = jax.value_and_grad(
                lambda p: loss(eqx.combine(p, static), x[rows], y[rows]))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, _), losses = jax.lax.scan(step, (trainable, optimizer.init(trainable)),
                                           indices)
        return params, losses

    return lambda: jax.block_until_ready(train(trainable, x, y, indices))


def with_filter_jit(model, x, y, indices, optimizer):
    @eqx.filter_jit
    def step(model, opt_state, x, y):
        value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state,
                                              eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, value

    def run():
        current = model
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        losses = []
        for rows in indices:
            current, opt_state, value = step(current, opt_state, x[rows], y[rows])
            losses.append(value)
        return jax.block_until_ready((current, losses))

    return run


def first_and_median(runs, repeats, block):
    """Seconds of each run's first call, and the median over ``repeats``
    rounds of a warm call's time (the mean of ``block`` calls in a row).
    The methods take turns within a round, in an order that rotates, so a
    busy spell, or caches a method leaves cold for the next, hit all alike."""
    first = {}
    for name, run in runs.items():
        began = time.perf_counter()
        run()
        first[name] = time.perf_counter() - began
        run()
    times = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            run = runs[name]
            run()  # the first call of a turn is not timed: it pays the previous method's mess
            began = time.perf_counter()
            for _ in range(block):
                run()
            times[name].append((time.perf_counter() - began) / block)
    return first, {name: statistics.median(t) for name, t in times.items()}


SIZES = {
    "large": dict(n=50_000, d=16, width=128, depth=3, steps=1_000, batch_size=128),
    "small": dict(n=1_000, d=8, width=32, depth=2, steps=100, batch_size=32),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small size, one repeat")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, equinox {eqx.__version__}, optax {optax.__version__}, "
          f"{os.cpu_count()} cores; medians of warm calls, the methods alternated")
    for label, sizes in SIZES.items():
        if args.quick and label != "small":
            continue
        repeats = 1 if args.quick else args.repeats
        block = 10 if label == "small" else 1  # a few ms a call: time ten in a row
        model, x, y, indices = problem(**sizes)
        optimizer = optax.adam(1e-3)
        runs = {name: make(model, x, y, indices, optimizer) for name, make in (
            ("fit", with_fit), ("lax.scan by hand", with_scan),
            ("eqx.filter_jit loop", with_filter_jit))}
        first, median = first_and_median(runs, repeats, block)
        print(f"\n{label}: MLP {sizes['d']}->{sizes['width']}x{sizes['depth']}->1, adam, "
              f"{sizes['steps']} steps of {sizes['batch_size']} rows of {sizes['n']}; "
              f"median of {repeats} rounds of {block} call(s)\n")
        print("| method | first call (compile included) | warm call | per step "
              "| time / fit's |")
        print("|---|---:|---:|---:|---:|")
        for name in runs:
            print(f"| {name} | {first[name] * 1e3:.0f} ms | {median[name] * 1e3:.2f} ms | "
                  f"{median[name] / sizes['steps'] * 1e6:.1f} us | "
                  f"{median[name] / median['fit']:.2f}x |")
        print(f"\nfit / hand-written scan: {median['fit'] / median['lax.scan by hand']:.2f}x "
              "(goal: at most 1.2x)")
        losses = {name: jnp.stack(list(run()[1])) for name, run in runs.items()}
        scan = losses["lax.scan by hand"]
        print("same run: largest |loss - scan's| / scan's, "
              + ", ".join(f"{name} {float(jnp.max(jnp.abs(value - scan) / scan)):.1e}"
                          for name, value in losses.items() if name != "lax.scan by hand"))


if __name__ == "__main__":
    main()
