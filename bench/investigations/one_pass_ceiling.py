"""What bounds the one-pass step on XLA:CPU: matrix-vector products by block size.

    python bench/investigations/one_pass_ceiling.py            # ~1 minute
    python bench/investigations/one_pass_ceiling.py --rounds 10

A one-pass step reads each block of ``x`` twice, ``x_b a`` then ``r_b x_b``,
the second time from cache. This times both products, alone and in turn, on
one array of ``d = 1000`` columns read over and over (a compiled loop reading
4 GB in all): a block of 0.5 MiB (in one core's L2), 2 and 4 MiB (in L3), and
``x`` itself (40 MB, larger than L3: from memory). Beside each, the threads
that did the work (CPU ticks per thread during the fastest round): XLA:CPU
splits a product over the cores only from some size on. The one-pass step
gains over the plain one only as far as the second read, from cache, is
faster than the first, from memory. Prints Markdown.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import jax.numpy as jnp
import numpy as np

COLUMNS = 1000
ROWS = (125, 500, 1000, 10_000)
READ_BYTES = 4e9


def thread_ticks():
    """CPU ticks (user + system) of each of this process's threads."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def cases(rows, rng):
    x = jnp.asarray(rng.standard_normal((rows, COLUMNS), dtype=np.float32))
    repeats = int(READ_BYTES / x.nbytes)

    def looped(pass_):
        # Each product feeds a carried vector, so none is hoisted or dropped.
        return jax.jit(lambda a: jax.lax.fori_loop(0, repeats, lambda i, g: g + 1e-30 * pass_(g), a))

    return x.nbytes, {
        "x a": (looped(lambda g: jnp.resize(x @ g, COLUMNS)), repeats * x.nbytes),
        "r x": (looped(lambda g: jnp.resize(g, rows) @ x), repeats * x.nbytes),
        "x a, then r x": (looped(lambda g: (x @ g) @ x), 2 * repeats * x.nbytes),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all cases; the "
                        "fastest counts")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    table = {}
    for rows in ROWS:
        nbytes, passes = cases(rows, rng)
        for name, (run, read) in passes.items():
            table[nbytes / 2**20, name] = (run, read)
    start = jnp.ones(COLUMNS, jnp.float32)
    for run, _ in table.values():
        run(start).block_until_ready()
    best = {key: (float("inf"), []) for key in table}
    for _ in range(args.rounds):
        for key, (run, _) in table.items():
            before = thread_ticks()
            began = time.perf_counter()
            run(start).block_until_ready()
            seconds = time.perf_counter() - began
            after = thread_ticks()
            if seconds < best[key][0]:
                busy = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
                best[key] = (seconds, [t for t in busy if t > 0])
    print(f"d = {COLUMNS}, float32, {READ_BYTES / 1e9:.0f} GB read a case, fastest of "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}\n")
    print("| array | products | GB/s read | CPU ticks per busy thread |")
    print("|---:|---|---:|---|")
    for (mib, name), (_, read) in table.items():
        seconds, busy = best[mib, name]
        print(f"| {mib:.2f} MiB | {name} | {read / seconds / 1e9:.1f} | "
              f"{', '.join(map(str, busy)) or '-'} |")


if __name__ == "__main__":
    main()
