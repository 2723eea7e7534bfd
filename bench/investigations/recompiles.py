"""``python bench/investigations/recompiles.py [--fits 300]``: fits that compile on every call.

A fresh ``optax.adam(lr)`` per call is a new compile-time constant, so every
call compiles. This prints the resident memory every 50 fits (it must level
off: ``fit`` keeps at most ``COMPILED_LOOPS_KEPT`` compiled loops) and the
warnings ``fit`` gave (one, saying why it keeps compiling).
"""

import argparse
import os
import resource
import sys
import time
import warnings

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import optax

import functional_sgd as fsgd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=300)
    args = parser.parse_args(argv)
    x, y = fsgd.lesson_data(jax.random.key(0))
    start = jnp.array(fsgd.LESSON_START)
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for i in range(args.fits):
            fsgd.fit(fsgd.linear_mse, start, (x, y), optimizer=optax.adam(0.1),
                     steps=20).params.block_until_ready()
            if (i + 1) % 50 == 0:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{i + 1} fits: peak resident {peak:.0f} MiB, "
                      f"{time.perf_counter() - began:.0f} s", flush=True)
    ours = [w for w in said if "fit compiled its loop again" in str(w.message)]
    print(f"{len(ours)} warning from fit: {str(ours[0].message)[:90]}..." if ours else
          "no warning from fit")


if __name__ == "__main__":
    main()
