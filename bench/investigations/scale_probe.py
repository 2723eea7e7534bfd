"""Times large full-batch and per-sample descent side by side and prints a table.

    python bench/investigations/scale_probe.py              # the issue's workloads, ~5 minutes
    python bench/investigations/scale_probe.py --quick      # 10x smaller, a smoke run
    python bench/investigations/scale_probe.py --only per-sample   # one of the two tables

Full batch, 100 steps, float32: the JAX general path (``fit`` with
``fast_path=False``: any loss, ``jax.grad``, data stored transposed), the
same loop without the layout (a plain ``scan`` over ``x`` row-major), the
sufficient-statistics fast path (``fast_path=True``) and torch eager
(``reference.fit``, the lesson's loop). Per-sample descent: ``fit`` with the
schedule ``arange(n)[:, None]`` against scikit-learn's ``SGDRegressor``
(one epoch in row order, constant step ``eta0 = 2 * lr``, as its loss is
half the squared error).

Every method is warmed up (compile time is printed apart), then the methods
take turns, ``--repeats`` rounds; the table shows medians and ratios from
the same run. Bandwidth: the loop must read ``x`` and ``y`` twice a step
(prediction, then gradient); the fraction is those bytes per second over
this machine's streaming read bandwidth (best of three readers over
256 MiB); above 100% means the data sat in cache.
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import functional_sgd as fsgd  # noqa: E402

FULL_BATCH = [(1_000_000, 2), (100_000, 100), (10_000, 1000)]
PER_SAMPLE = [(200_000, 2), (200_000, 20), (2_000_000, 2), (2_000_000, 20)]
STEPS = 100
LR = 0.1


def regression(n, d, seed=0):
    """The lesson's data, widened: ``x ~ U(-1, 1)`` with a column of ones last."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    x[:, -1] = 1.0
    y = (x @ rng.normal(size=d) + rng.uniform(0, 1, n)).astype(np.float32)
    return x, y


def read_bandwidth(repeats):
    """Bytes per second streamed from memory (256 MiB, out of cache): the best
    of a jitted sum, a jitted matrix-vector product (multi-threaded) and NumPy's sum."""
    big = jnp.ones((4 << 20, 16), jnp.float32)
    host = np.ones(big.shape, np.float32)
    readers = [lambda: jax.jit(jnp.sum)(big).block_until_ready(),
               lambda: jax.jit(jnp.matmul)(big, jnp.ones(16, jnp.float32)).block_until_ready(),
               lambda: host.sum()]
    best = 0.0
    for read in readers:
        read()
        seconds = []
        for _ in range(max(repeats, 5)):
            start = time.perf_counter()
            read()
            seconds.append(time.perf_counter() - start)
        best = max(best, big.nbytes / statistics.median(seconds))
    return best


@partial(jax.jit, static_argnames="steps")
def row_major_loop(params, x, y, lr, *, steps):
    """The fused loop without the layout: what ``fit`` compiled before it."""
    def step(a, _):
        value, grad = fsgd.gradient(fsgd.linear_mse, a, x, y)
        return fsgd.sgd_update(a, grad, lr), value
    return jax.lax.scan(step, params, None, length=steps)


def full_batch_methods(x, y):
    import reference
    a = np.zeros(x.shape[1], np.float32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    run = partial(fsgd.fit, fsgd.linear_mse, a, (xj, yj), lr=LR, steps=STEPS)

    def without_checks(exact_moments):
        return fsgd.Run(check_finite=False,
                        speed=fsgd.speed.SpeedPlan(exact_moments=exact_moments))

    return {
        "jax general": lambda: _final_loss(run(run=without_checks(False)).losses),
        "jax row-major": lambda: _final_loss(row_major_loop(a, xj, yj, LR, steps=STEPS)[1]),
        "jax fast path": lambda: _final_loss(run(run=without_checks(True)).losses),
        "torch eager": lambda: float(reference.fit(fsgd.linear_mse, a, (x, y), lr=LR,
                                                   steps=STEPS)[1][-1]),
    }


def per_sample_methods(x, y, lr):
    from sklearn.linear_model import SGDRegressor
    a = np.zeros(x.shape[1], np.float32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    rows = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]

    def sklearn():
        model = SGDRegressor(penalty=None, learning_rate="constant", eta0=2 * lr,
                             shuffle=False, fit_intercept=False, max_iter=1, tol=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "max_iter reached": one epoch is the point
            model.fit(x, y)
        return model.coef_

    def jax_fit():
        return fsgd.fit(fsgd.linear_mse, a, (xj, yj), lr=lr, rows=fsgd.Schedule(rows), run=fsgd.Run(check_finite=False)).params.block_until_ready()

    return {"jax per-sample": jax_fit, "sklearn SGDRegressor": sklearn}


def _final_loss(losses):
    return float(losses[-1])


def time_side_by_side(methods, repeats):
    """Warm-up (compile) per method, then ``repeats`` rounds taking turns."""
    first, seconds, results = {}, {name: [] for name in methods}, {}
    for name, method in methods.items():
        start = time.perf_counter()
        results[name] = method()
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return medians, first, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10x smaller data")
    parser.add_argument("--only", choices=("full-batch", "per-sample"),
                        help="run one of the two tables")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    bandwidth = read_bandwidth(args.repeats)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; "
          f"streaming read bandwidth {bandwidth / 1e9:.1f} GB/s; median of "
          f"{args.repeats} rounds; compile = first call minus median\n")
    print("| workload | method | median ms | compile ms | vs peer | GB/s read | of bw "
          "| final loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for n, d in FULL_BATCH if args.only != "per-sample" else ():
        n //= scale
        x, y = regression(n, d)
        medians, first, losses = time_side_by_side(full_batch_methods(x, y), args.repeats)
        bytes_per_step = 2 * (x.nbytes + y.nbytes)
        for name, seconds in medians.items():
            rate = bytes_per_step * STEPS / seconds
            reads = "-" if name in ("jax fast path",) else f"{rate / 1e9:.1f}"
            share = "-" if reads == "-" else f"{rate / bandwidth:.0%}"
            _row(f"full batch n={n:.0e} d={d}", name, seconds, first[name],
                 medians["torch eager"] / seconds, reads, share, losses[name])
    for n, d in PER_SAMPLE if args.only != "full-batch" else ():
        n //= scale
        x, y = regression(n, d, seed=1)
        medians, first, params = time_side_by_side(per_sample_methods(x, y, lr=0.01),
                                                   args.repeats)
        for name, seconds in medians.items():
            loss = float(np.mean((x @ np.asarray(params[name]) - y) ** 2))  # not timed
            _row(f"per-sample n={n:.0e} d={d}", name, seconds, first[name],
                 medians["sklearn SGDRegressor"] / seconds, "-", "-", loss)


def _row(workload, name, seconds, first, ratio, reads, share, loss):
    print(f"| {workload} | {name} | {seconds * 1e3:.1f} | "
          f"{max(first - seconds, 0) * 1e3:.0f} | {ratio:.2f}x | {reads} | {share} "
          f"| {loss:.6g} |", flush=True)


if __name__ == "__main__":
    main()
