"""Large full batch: the plain step vs the one-pass steps, against the read bandwidth.

    python -m bench.investigations.one_pass                      # the issue's two shapes, ~3 minutes
    python -m bench.investigations.one_pass --loss mse mnist bce # the lesson's three losses
    python -m bench.investigations.one_pass --quick              # 10x fewer rows
    python -m bench.investigations.one_pass --shapes 10000x1000  # one shape
    python -m bench.investigations.one_pass --blocks 2097152 4194304 8388608   # block sizes, bytes

The plain step (``SpeedPlan(one_pass=False)``) reads ``x`` twice a step; the
one-pass steps read it once: the row kernel (``row_kernel=True``,
``speed/_row_kernel.py``, each row once, on all cores) and XLA's row blocks
(``row_kernel=False``, ``speed/_one_pass.py``, in blocks of
``row_block_bytes``). All run ``fit`` with the exact-moments path off (the
general ``jax.grad`` path any loss takes). The losses: ``mse`` is
``linear_mse``; ``mnist`` and ``bce`` are ``mnist_loss`` and
``binary_cross_entropy`` of the linear classifier's scores, on 0/1 targets.

``read x`` is the machine's read bandwidth over this very array: a compiled
loop of ``STEPS`` products ``x @ v`` with ``x`` stored as ``fit`` stores it
(column-major for ``d <= 256``, as ``speed/_layout.py`` does), which XLA runs
on all cores. Every row gives ``STEPS x bytes(x) / time``: a step that read
``x`` once at the read bandwidth would score 100%; the plain step reads it
twice, so it cannot pass 50% by reading alone.

The methods alternate within each of ``--repeats`` rounds, so a busy machine
slows them alike; each time is the fastest round (the least disturbed: on a
shared machine the median mostly measures the neighbours), the median is
given beside it. ``plain / method`` divides the fastest rounds. Prints Markdown.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from functional_sgd.lesson._classify import classifier_cross_entropy, classifier_mnist_loss
from functional_sgd.speed import SpeedPlan, column_major

SHAPES = [(100_000, 100), (10_000, 1000)]
STEPS = 100
LOSSES = {"mse": fsgd.linear_mse, "mnist": classifier_mnist_loss, "bce": classifier_cross_entropy}


def problem(n, d, loss_name):
    """Standard normal ``x`` ``(n, d)``, targets and zero params, float32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    if loss_name == "mse":
        return x, rng.standard_normal(n, dtype=np.float32), np.zeros(d, np.float32)
    y = (rng.uniform(size=n) < 0.5).astype(np.float32)
    return x, y, (np.zeros(d, np.float32), np.float32(0.0))


def fit_run(loss, params, data, plan):
    run = fsgd.Run(speed=dataclasses.replace(plan, exact_moments=False))
    return lambda: jax.block_until_ready(fsgd.fit(loss, params, data, lr=1e-3, steps=STEPS,
                                                  run=run).params)


def read_run(loss, params, data):
    """``STEPS`` reads of ``x`` stored as the plain step stores it: ``x @ v``,
    each product scaled into a carried scalar so none is hoisted or dropped."""
    _, (stored, *_) = column_major(loss, params, data)
    column = stored.shape[0] != data[0].shape[0]

    @jax.jit
    def run(stored):
        v = jnp.ones(stored.shape[0] if column else stored.shape[1], stored.dtype)

        def one(i, carry):
            w = v * (1 + carry)
            return carry + 1e-30 * (w @ stored if column else stored @ w)[0]
        return jax.lax.fori_loop(0, STEPS, one, jnp.float32(0))
    return lambda: run(stored).block_until_ready()


def spread(values, fmt):
    return f"{fmt(min(values))} (median {fmt(statistics.median(values))})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer rows")
    parser.add_argument("--repeats", type=int, default=15, help="rounds of all methods")
    parser.add_argument("--loss", nargs="*", choices=sorted(LOSSES), default=["mse"])
    parser.add_argument("--shapes", nargs="*", default=[f"{n}x{d}" for n, d in SHAPES],
                        help="ROWSxCOLUMNS each (default: %(default)s)")
    parser.add_argument("--blocks", type=int, nargs="*", default=[SpeedPlan().row_block_bytes],
                        help="one-pass block sizes in bytes")
    args = parser.parse_args(argv)
    ms = lambda s: f"{s * 1e3:.1f} ms"
    print(f"{STEPS} steps of fit(..., exact moments off), float32; fastest of {args.repeats} "
          f"rounds, methods alternating within a round; load average before: "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| loss | shape | method | time of 100 steps | steps x bytes(x) / time | "
          "of read x | plain / method |")
    print("|---|---|---|---:|---:|---:|---:|")
    for loss_name in args.loss:
        loss = LOSSES[loss_name]
        for shape in args.shapes:
            n, d = map(int, shape.split("x"))
            n //= 10 if args.quick else 1
            x, y, params = problem(n, d, loss_name)
            data = (jnp.asarray(x), jnp.asarray(y))
            params = jax.tree.map(jnp.asarray, params)
            methods = {"read x (x @ v)": read_run(loss, params, data),
                       "plain (two reads)": fit_run(loss, params, data,
                                                    SpeedPlan(one_pass=False))}
            methods["one pass, row kernel"] = fit_run(
                loss, params, data, SpeedPlan(one_pass=True, row_kernel=True))
            for block in args.blocks:
                methods[f"one pass, {block / 2**20:g} MiB blocks"] = fit_run(
                    loss, params, data, SpeedPlan(one_pass=True, row_kernel=False,
                                                  row_block_bytes=block))
            methods["fit as users call it"] = fit_run(loss, params, data, SpeedPlan())
            plain = jax.tree.map(np.asarray, methods["plain (two reads)"]())
            for name, run in methods.items():  # warm-up, and agreement with the plain step
                out = run()
                if name.startswith("one pass"):
                    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(plain)):
                        err = float(np.max(np.abs(np.asarray(got) - want)))
                        assert err <= 1e-4 * (1 + float(np.max(np.abs(want)))), (name, err)
            times = {name: [] for name in methods}
            for _ in range(args.repeats):
                for name, run in methods.items():
                    began = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - began)
            read_gbs = STEPS * x.nbytes / min(times["read x (x @ v)"]) / 1e9
            for name, seconds in times.items():
                gbs = STEPS * x.nbytes / min(seconds) / 1e9
                print(f"| {loss_name} | {n:.0e} x {d} | {name} | {spread(seconds, ms)} | "
                      f"{gbs:.1f} GB/s | {gbs / read_gbs:.0%} | "
                      f"{min(times['plain (two reads)']) / min(seconds):.2f}x |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
