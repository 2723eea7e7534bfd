"""Large full batch through the general path: plain step vs one pass vs torch.

    python -m bench.investigations.one_pass                      # the report's two shapes, ~2 minutes
    python -m bench.investigations.one_pass --quick              # 10x fewer rows
    python -m bench.investigations.one_pass --blocks 262144 1048576 4194304   # block sizes, bytes

The plain step (``SpeedPlan(one_pass=False)``) reads ``x`` twice a step, the
one-pass step (``one_pass=True``, ``speed/_one_pass.py``) once, in blocks of
``row_block_bytes``. Both run ``fit`` with ``fast_path=False`` (the general
``jax.grad`` path any loss takes) and ``linear_mse``; torch is the reference
loop. The methods alternate within each of ``--repeats`` rounds, so a busy
machine slows them alike; the table gives each method's median per step over
the rounds (min-max), and the ratios per round (median, min-max). ``x read``
is the bytes of ``x`` a step reads from memory (two reads or one), at the
step's time. Prints Markdown.
"""

import argparse
import dataclasses
import statistics

import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from bench import timing
from bench.investigations.profile_large import problem
from functional_sgd.speed import SpeedPlan

SHAPES = [(100_000, 100), (10_000, 1000)]
STEPS = 100


def without_moments(plan):
    """``plan`` (the defaults for ``None``) with the exact-moments path off."""
    return fsgd.Run(speed=dataclasses.replace(plan or SpeedPlan(), exact_moments=False))


def fit_run(x, y, a, plan):
    run = without_moments(plan)
    return lambda: fsgd.fit(fsgd.linear_mse, a, (x, y), lr=1e-3, steps=STEPS,
                            run=run).params.block_until_ready()


def torch_run(x, y, a):
    import torch

    import reference

    xt, yt, at = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(a)
    return lambda: reference.fit(fsgd.linear_mse, at, (xt, yt), lr=1e-3, steps=STEPS)


def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer rows")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of all methods")
    parser.add_argument("--blocks", type=int, nargs="*", default=[SpeedPlan().row_block_bytes],
                        help="one-pass block sizes in bytes")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    ms = lambda s: f"{s * 1e3:.2f} ms"
    ratio = lambda r: f"{r:.2f}x"
    print(f"{STEPS} steps of fit(linear_mse, fast_path=False); per step, median of "
          f"{args.repeats} rounds (min-max); methods alternate within a round\n")
    print("| shape | method | time per step | x read per step | GB/s of x | "
          "torch / method | plain / method |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for n, d in SHAPES:
        n //= 10 if args.quick else 1
        x, y, a = problem(n, d)
        xj, yj, aj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(a)
        methods = {"plain (two reads)": (fit_run(xj, yj, aj, SpeedPlan(one_pass=False)), 2)}
        for block in args.blocks:
            methods[f"one pass, {block // 1024} KiB blocks"] = (
                fit_run(xj, yj, aj, SpeedPlan(one_pass=True, row_block_bytes=block)), 1)
        methods["fit as users call it"] = (fit_run(xj, yj, aj, None), None)
        if not args.no_torch:
            methods["torch reference"] = (torch_run(x, y, a), 2)
        results = {name: np.asarray(fsgd.fit(fsgd.linear_mse, aj, (xj, yj), lr=1e-3,
                                             steps=STEPS,
                                             run=without_moments(SpeedPlan(one_pass=False))
                                             ).params)
                   for name in ("plain",)}
        for name, (run, _) in methods.items():  # warm-up, and agreement with the plain path
            out = run()
            if name != "torch reference":
                err = float(np.max(np.abs(np.asarray(out) - results["plain"])))
                assert err <= 1e-4 * (1 + float(np.max(np.abs(results["plain"])))), (name, err)
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, (run, _) in methods.items():
                times[name].append(timing.median_seconds(run, budget=0, min_rounds=3,
                                                         max_rounds=3, call_s=0) / STEPS)
        for name, (_, reads) in methods.items():
            per_step = times[name]
            read = f"{reads * x.nbytes / 2**20:.0f} MiB" if reads else "-"
            gbs = f"{reads * x.nbytes / statistics.median(per_step) / 1e9:.1f}" if reads else "-"
            vs_torch = "-" if args.no_torch else spread(
                [t / s for t, s in zip(times["torch reference"], per_step)], ratio)
            vs_plain = spread([p / s for p, s in zip(times["plain (two reads)"], per_step)],
                              ratio)
            print(f"| {n:.0e} x {d} | {name} | {spread(per_step, ms)} | {read} | {gbs} | "
                  f"{vs_torch} | {vs_plain} |", flush=True)


if __name__ == "__main__":
    main()
