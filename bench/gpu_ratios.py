"""``python -m bench.gpu_ratios``: issue 24's three ratios on this machine's default device.

* shuffled epochs against independent draws: ``fit`` with ``replace=False``
  over ``replace=True``, 1e5 x 10 float32, 1,000 steps of 64 (target <= 1.25);
* small steps: the lesson's ``fit`` (100 rows, 100 full-batch steps) over a
  hand-written ``jax.jit(lax.scan)`` of it (``bench/peers.py``; target <= 1.1);
* the lesson with its arrays on this process's CPU device over the same in
  a CPU-only process (``JAX_PLATFORMS=cpu``) on the same machine (target
  <= 1.25; on a CPU-only machine both sides are CPU processes);
* one read a step: ``fit`` of ``linear_mse`` with the row kernel
  (``SpeedPlan(row_kernel=True)``: the Pallas kernel on a GPU, the C++ one on
  a CPU) over the plain step's two reads, 1e6 x 1000 float32 (1e4 x 1000 at
  ``--size smoke``), 50 steps (target <= 1 / 1.7), its params checked against
  the plain step's, and its bytes a second beside a compiled read of ``x``.

Each figure is the minimum over interleaved rounds, every call synchronised
(its params copied to the host). Run by ``python -m bench.gpu_check``.

``--diagnosis FILE.md`` also writes where the shuffle's and the small step's
time goes, for a session without a GPU to read: each side timed at two run
lengths, its time split as ``per call + steps x per step`` (a gap per call is
the host's or the dispatch's; a gap per step is in the compiled loop).
"""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

import functional_sgd as fsgd
from bench import gpu_check, peers
from bench.methods import _fit_fused
from bench.workloads import FULL, make_problem

ROUNDS = {"full": 60, "short": 60, "smoke": 5}
TARGETS = {"shuffle": 1.25, "small step": 1.1, "cpu device": 1.25, "one read": 1 / 1.7}
ONE_READ_SHAPE = {"full": (1_000_000, 1000), "short": (1_000_000, 1000), "smoke": (10_000, 1000)}
ONE_READ_STEPS = 50
ONE_READ_ROUNDS = {"full": 10, "short": 10, "smoke": 3}
LESSON = FULL[0]


def interleaved_min(runs, rounds):
    """``{name: min seconds}`` over ``rounds`` rounds, each calling every run once."""
    for run in runs.values():
        run()  # compile and warm up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - began)
    return best


def shuffle_runs(device=None, steps=1_000):
    """``fit`` at 1e5 x 10, ``steps`` steps of 64, rows drawn both ways."""
    weights = np.linspace(-1, 1, 10, dtype=np.float32)
    x, y = fsgd.lesson_data(jax.random.key(0), 100_000, a=weights)
    x, y, start = (jax.device_put(a, device) for a in (x, y, np.zeros(10, np.float32)))

    def run(replace):
        def call():
            return np.asarray(fsgd.fit(fsgd.linear_mse, start, (x, y), lr=0.05, steps=steps,
                                       batch_size=64, key=jax.random.key(1),
                                       rows=(fsgd.Shuffled() if not replace else fsgd.Sampled())).params)
        return call

    return {"replace=True": run(True), "replace=False": run(False)}


def lesson_seconds(device, rounds):
    """The lesson's ``fit`` on ``device``: min seconds over ``rounds`` calls."""
    run = _fit_fused(make_problem(LESSON), device)
    return interleaved_min({"fit": run}, rounds)["fit"]


def cpu_only_lesson_seconds(rounds):
    """:func:`lesson_seconds` in a child process that sees only the CPU."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_dump")]  # its HLO would mix with this process's
    env = gpu_check.child_env(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    code = ("import json, jax; from bench.gpu_ratios import lesson_seconds; "
            f"print(json.dumps(lesson_seconds(jax.devices('cpu')[0], {rounds})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=gpu_check.ROOT, check=True,
                          capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_read_runs(size):
    """``fit`` of ``linear_mse`` with the row kernel and with the plain step,
    and a compiled loop reading ``x`` (``x @ v``) as often, on the default
    device; checks that the two fits agree (float32, 50 steps: 1e-4)."""
    n, d = ONE_READ_SHAPE[size]
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (n, d), np.float32)
    y = jax.random.normal(key_y, (n,), np.float32)
    start = jax.numpy.zeros(d, np.float32)
    plans = {"row kernel": fsgd.speed.SpeedPlan(exact_moments=False, one_pass=True,
                                                row_kernel=True),
             "plain": fsgd.speed.SpeedPlan(exact_moments=False, one_pass=False)}

    def fit(plan):
        return lambda: np.asarray(fsgd.fit(fsgd.linear_mse, start, (x, y), lr=1e-4,
                                           steps=ONE_READ_STEPS,
                                           run=fsgd.Run(speed=plan)).params)

    runs = {name: fit(plan) for name, plan in plans.items()}
    kernel, plain = runs["row kernel"](), runs["plain"]()
    error = float(np.max(np.abs(kernel - plain)) / np.max(np.abs(plain)))
    if not error <= 1e-4:
        raise AssertionError(f"the row kernel's params are {error:.1e} from the plain step's")

    @jax.jit
    def read(x):
        v = jax.numpy.ones(d, x.dtype)
        return jax.lax.fori_loop(0, ONE_READ_STEPS,
                                 lambda i, c: c + 1e-30 * (x @ (v * (1 + c)))[0],
                                 jax.numpy.zeros((), x.dtype))

    runs["read x"] = lambda: np.asarray(read(x))
    return runs, x.nbytes * ONE_READ_STEPS, error


def measure(size="short"):
    """Rows ``(ratio, numerator s, denominator s, target)`` by name."""
    rounds = ROUNDS[size]
    shuffle, small = (interleaved_min(split_runs(name, SPLIT_STEPS[name][0]), rounds)
                      for name in ("shuffle", "small step"))
    on_cpu = lesson_seconds(jax.devices("cpu")[0], rounds)
    cpu_only = cpu_only_lesson_seconds(rounds)
    return {
        "shuffle": (shuffle["replace=False"], shuffle["replace=True"],
                    "replace=False / replace=True, 1e5 x 10, 1,000 steps of 64"),
        "small step": (small["fit"], small["scan"],
                       "the lesson: fit / hand-written jax.jit(lax.scan)"),
        "cpu device": (on_cpu, cpu_only,
                       "the lesson on this process's CPU device / in a CPU-only process"),
        "one read": one_read_row(size),
    }


def one_read_row(size):
    """The one-read ratio's row; where the kernel fails to compile or agree
    (the GPU kernel's first runs), the row says why instead of ending the stage."""
    try:
        runs, read_bytes, error = one_read_runs(size)
        one_read = interleaved_min(runs, ONE_READ_ROUNDS[size])
    except Exception as failure:  # reported in the table: the other ratios stand
        return (None, None, f"failed: {type(failure).__name__}: {str(failure)[:300]}")
    kernel_rate, read_rate = (read_bytes / one_read[name] / 1e9 for name in ("row kernel", "read x"))
    return (one_read["row kernel"], one_read["plain"],
            f"fit, row kernel / plain step, {ONE_READ_SHAPE[size][0]:.0e} x "
            f"{ONE_READ_SHAPE[size][1]} float32, {ONE_READ_STEPS} steps: "
            f"{kernel_rate:.0f} GB/s read, {kernel_rate / read_rate:.0%} of a compiled "
            f"read of x ({read_rate:.0f} GB/s); params {error:.1e} from the plain step's")


SPLIT_STEPS = {"shuffle": (1_000, 4_000), "small step": (LESSON.steps, 1_000)}
"""Run lengths of the two ratios' sides: the first is the ratio's own, the
second the longer run :func:`split_per_call_and_step` times beside it."""


def split_runs(name, steps):
    """The two sides of ratio ``name`` at ``steps`` steps, by side."""
    if name == "shuffle":
        return shuffle_runs(steps=steps)
    problem = make_problem(dataclasses.replace(LESSON, steps=steps))
    return {"fit": _fit_fused(problem, None), "scan": peers.handwritten_scan(problem, None)}


def split_per_call_and_step(name, rounds):
    """``{side: (per call s, per step s)}`` of ratio ``name``: each side's
    minimum time at the two lengths of :data:`SPLIT_STEPS` on the line
    ``per call + steps x per step`` (the longer runs take fewer rounds)."""
    short, long = SPLIT_STEPS[name]
    at_short = interleaved_min(split_runs(name, short), rounds)
    at_long = interleaved_min(split_runs(name, long), max(2, rounds // 6))
    return {side: ((long * at_short[side] - short * at_long[side]) / (long - short),
                   (at_long[side] - at_short[side]) / (long - short)) for side in at_short}


def diagnosis(size):
    """Markdown: the shuffle's and the small step's sides split per call and per step."""
    lines = ["| ratio | side | per call | per step | steps timed |", "|---|---|---|---|---|"]
    for name in SPLIT_STEPS:
        for side, (call, step) in split_per_call_and_step(name, ROUNDS[size]).items():
            lines.append(f"| {name} | {side} | {call * 1e6:.1f} us | {step * 1e6:.3f} us | "
                         f"{' and '.join(f'{s:,}' for s in SPLIT_STEPS[name])} |")
    return "\n".join(lines)


def table(rows):
    lines = ["| ratio | what | measured | numerator | denominator | target | met |",
             "|---|---|---|---|---|---|---|"]
    for name, (top, bottom, what) in rows.items():
        if top is None:  # the measurement failed; ``what`` says how
            lines.append(f"| {name} | {what} | - | - | - | <= {TARGETS[name]:.3g} | **no** |")
            continue
        ratio = top / bottom
        lines.append(f"| {name} | {what} | {ratio:.2f} | {top * 1e3:.3f} ms | "
                     f"{bottom * 1e3:.3f} ms | <= {TARGETS[name]:.3g} | "
                     f"{'yes' if ratio <= TARGETS[name] else '**no**'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_ratios",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(ROUNDS), default="short")
    parser.add_argument("--out", type=pathlib.Path, help="also write the table here (.md)")
    parser.add_argument("--diagnosis", type=pathlib.Path,
                        help="also split the shuffle's and the small step's time per call "
                             "and per step, written here (.md)")
    args = parser.parse_args(argv)
    with jax.default_matmul_precision("highest"):
        rows = measure(args.size)
    devices = ", ".join(sorted({str(d.device_kind) for d in jax.devices()}))
    text = (f"# Issue 24's ratios on {jax.default_backend()} ({devices})\n\n"
            f"Written by `python -m bench.gpu_ratios --size {args.size}`: minimum over "
            f"{ROUNDS[args.size]} interleaved rounds, every call synchronised.\n\n"
            + table(rows) + "\n")
    print(text, flush=True)
    if args.out:  # written before the diagnosis, which a time limit may cut short
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.diagnosis:
        with jax.default_matmul_precision("highest"):
            split = diagnosis(args.size)
        text = (f"# Where the time of two of issue 24's ratios goes, on {jax.default_backend()} "
                f"({devices})\n\nWritten by `python -m bench.gpu_ratios --size {args.size} "
                "--diagnosis`: each side's minimum time at two run lengths, split as "
                "`per call + steps x per step`. A gap per call is the host's or the "
                "dispatch's; a gap per step is in the compiled loop (its optimized HLO is "
                "in `gpu_hlo.tar.gz` beside this file when `bench.gpu_check` wrote it).\n\n"
                + split + "\n")
        print(text)
        args.diagnosis.parent.mkdir(parents=True, exist_ok=True)
        args.diagnosis.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
