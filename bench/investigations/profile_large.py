"""Where a large full-batch step spends its time: each pass over ``x`` alone.

    python bench/investigations/profile_large.py            # the issue's three shapes, ~1 minute
    python bench/investigations/profile_large.py --quick    # 10x fewer rows

A step of the general path reads ``x`` twice: the prediction ``x a`` and the
gradient ``xᵀ r``. This times each pass on its own (JAX: 100 passes in one
compiled ``fori_loop``, ``x`` stored as ``fit`` stores it; torch: eager, as
the reference runs them), then the whole ``fit`` step, against the time two
reads of ``x`` take at this machine's in-cache read bandwidth (BLAS re-reading
an array of the same shape). The last column, torch's step over those two
reads, is the largest speed-up over torch that any step reading ``x`` twice
can reach. Prints a Markdown table.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import numpy as np

import functional_sgd as fsgd
from bench import machine, timing

SHAPES = [(1_000_000, 2), (100_000, 100), (10_000, 1000)]
PASSES = 100


def jax_passes(x, y, a):
    """Per-pass seconds of ``x a`` and ``xᵀ r`` with ``x`` stored as ``(d, n)``."""
    stored = jnp.asarray(x.T).copy() if 1 < x.shape[1] <= 256 else jnp.asarray(x)
    column_major = stored.shape[0] == x.shape[1]
    a, r = jnp.asarray(a), jnp.asarray(y)

    def repeat(pass_, vector):
        # A scalar carried from pass to pass keeps XLA from hoisting the pass
        # out of the loop; scaling the vector costs a read of it (n floats for
        # xᵀ r, small next to x's n d).
        @jax.jit
        def run(stored, vector):
            def one(i, carry):
                return carry + 1e-30 * pass_(stored, vector * (1 + carry))[0]
            return jax.lax.fori_loop(0, PASSES, one, jnp.float32(0))
        return lambda: run(stored, vector).block_until_ready()

    forward = (lambda s, v: v @ s) if column_major else (lambda s, v: s @ v)
    backward = (lambda s, v: s @ v) if column_major else (lambda s, v: v @ s)
    return repeat(forward, a), repeat(backward, r)


def torch_passes(x, y, a):
    import torch

    xt, at, rt = torch.as_tensor(x), torch.as_tensor(a), torch.as_tensor(y)

    def forward():
        for _ in range(PASSES):
            xt @ at

    def backward():
        for _ in range(PASSES):
            xt.T @ rt

    return forward, backward


def fit_step(x, y, a):
    xj, yj, aj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(a)
    return lambda: fsgd.fit(fsgd.linear_mse, aj, (xj, yj), lr=1e-3, steps=PASSES,
                            run=fsgd.Run(speed=fsgd.speed.SpeedPlan(exact_moments=False))).params.block_until_ready()


def torch_step(x, y, a):
    import torch

    import reference

    xt, yt, at = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(a)
    return lambda: reference.fit(fsgd.linear_mse, at, (xt, yt), lr=1e-3, steps=PASSES)


def problem(n, d):
    """Standard normal ``x`` ``(n, d)`` and ``y`` ``(n,)``, zero ``a``, float32 NumPy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    return x, y, np.zeros(d, np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer rows")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {os.cpu_count()} cores; per pass = median of "
          f"{args.repeats} runs of {PASSES} passes / {PASSES}\n")
    print("| shape | two reads at in-cache speed | jax x a | jax xᵀ r | jax step (fit) "
          "| torch x a | torch xᵀ r | torch step (reference) | best two-pass ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, d in SHAPES:
        n //= 10 if args.quick else 1
        x, y, a = problem(n, d)
        ceiling = 2 * x.nbytes / (machine.in_cache_read_bandwidth(x) * 1e9)
        cells = [timing.median_seconds(run, budget=0, min_rounds=args.repeats,
                                       max_rounds=args.repeats) / PASSES
                 for run in (*jax_passes(x, y, a), fit_step(x, y, a),
                             *torch_passes(x, y, a), torch_step(x, y, a))]
        # No step that reads x twice beats torch by more than this.
        best_ratio = cells[-1] / ceiling
        print(f"| {n:.0e} x {d} | {ceiling * 1e3:.3f} ms | "
              + " | ".join(f"{c * 1e3:.3f} ms" for c in cells) + f" | {best_ratio:.2f}x |")


if __name__ == "__main__":
    main()
