"""Where a warm ``fit`` call on the lesson spends its time, as users get it.

    python bench/investigations/lesson_profile.py             # medians of 3000 calls, ~1 minute
    python bench/investigations/lesson_profile.py --calls 300 # quicker, noisier

The lesson (``linear_mse``, 100 x 2, 100 full-batch steps, JAX arrays) is
timed in four fresh processes, one per XLA:CPU set-up that
``functional_sgd.tune_cpu()`` switches (each is process-wide, read when the
CPU backend starts):

* as users get it: a program whose ``HloCostAnalysis`` flop count is 1000 or
  more (a while loop's body is counted once) runs on a worker thread, so the
  call waits for a thread hand-off; each loop iteration runs its kernels one
  by one through the thunk executor (only loops whose iteration touches
  under 1 KiB are compiled into one kernel);
* inline dispatch only (``jax_cpu_enable_async_dispatch=False``);
* small loops only (``xla_cpu_small_while_loop_byte_threshold`` raised);
* both (``tune_cpu()``).

In each it times warm calls of ``fit`` as users call it, of a ``Trainer``
of the same spec, the compiled loop
that ``fit`` calls (the jitted call alone, its inputs prepared once), the
hand-written ``jax.jit(lax.scan)`` and a trivial jitted call (``p + 1``),
round-robin, and prints a Markdown table and the breakdown of ``fit``'s
time as users get it:

* fit's Python: ``fit`` minus its jitted call under ``tune_cpu()``, where
  both run on the calling thread, one after the other;
* the loop as one kernel: the jitted call under ``tune_cpu()`` (arithmetic
  and a call's fixed cost; the trivial call's time shows that fixed cost);
* the loop's executor: the jitted call with inline dispatch only, minus the
  same under ``tune_cpu()`` (per step: over the 100 steps);
* thread hand-off and waiting: the rest of ``fit`` as users get it. It
  depends on how long the worker thread sat idle: ``fit``'s own Python
  before its call lets it fall asleep (as users get it, ``fit`` minus its
  jitted call is larger than the Python alone).

The calls run in a new seeded order each round, so none always follows
another.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUPS = (("as users get it", {}),
          ("inline dispatch only", {"inline_dispatch": True, "small_loops": False}),
          ("small loops only", {"inline_dispatch": False, "small_loops": True}),
          ("tune_cpu()", {"inline_dispatch": True, "small_loops": True}))
MEASURES = ("fit", "Trainer call", "fit's jitted call", "hand-written scan",
            "trivial jitted call")


def measure(tune, calls):
    """Medians in seconds of :data:`MEASURES` in this process (after ``tune``)."""
    import functional_sgd as fsgd

    if tune:
        fsgd.tune_cpu(**tune)
    import jax
    import jax.numpy as jnp

    from bench import peers
    from bench.workloads import FULL, make_problem
    from functional_sgd.core import _repeat

    problem = make_problem(next(w for w in FULL if w.name == "lesson"))
    w = problem.workload
    start, x, y = (jnp.asarray(a) for a in (problem.start, problem.x, problem.y))

    def fit():
        return fsgd.fit(fsgd.linear_mse, start, (x, y), lr=w.lr, steps=w.steps).params

    trainer = fsgd.Trainer(fsgd.linear_mse, steps=w.steps)

    def trained():
        return trainer(start, (x, y), lr=w.lr).params

    fit(), fit(), fit()  # compiled, remembered, its lr on the device: warm calls from here
    trained(), trained(), trained()
    again = trainer._memory.last()
    step, stop, *_ = again.known
    fields = (start, None, step, stop, None, None,
              (x, y), again.last_lr[1], None, None, None, None, None, ())
    loop = _repeat._compiled_loop if again.spec.plan.cpu_compiler_options else \
        _repeat._plain_loop
    scan = peers.handwritten_scan(problem, None)
    trivial = jax.jit(lambda p: p + 1)
    runs = {"fit": fit, "Trainer call": trained,
            "fit's jitted call": lambda: loop(*fields, spec=again.spec)[0],
            "hand-written scan": scan, "trivial jitted call": lambda: trivial(start)}
    times = {name: [] for name in runs}
    for run in runs.values():
        jax.block_until_ready(run())
    order = list(runs)
    shuffle = random.Random(0).shuffle
    for _ in range(calls):
        shuffle(order)
        for name in order:
            began = time.perf_counter()
            jax.block_until_ready(runs[name]())
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}


def in_child(tune, calls):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(tune),
                           "--calls", str(calls)], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def us(seconds):
    return f"{seconds * 1e6:,.1f} us"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(json.loads(args.child), args.calls)))
        return 0
    medians = {name: in_child(tune, args.calls) for name, tune in SETUPS}
    print("| set-up | " + " | ".join(MEASURES) + " |")
    print("|---|" + "---|" * len(MEASURES))
    for name, m in medians.items():
        print(f"| {name} | " + " | ".join(us(m[k]) for k in MEASURES) + " |")
    users, inline = medians["as users get it"], medians["inline dispatch only"]
    both = medians["tune_cpu()"]
    call, steps = "fit's jitted call", 100
    python = both["fit"] - both[call]
    executor = inline[call] - both[call]
    per_step = f"{executor / steps * 1e9:,.0f} ns a step"
    parts = [("fit's Python (fit minus its jitted call, under tune_cpu())", python),
             ("the loop as one kernel, a call's fixed cost included (tune_cpu())", both[call]),
             (f"the loop's executor (inline dispatch only, minus tune_cpu(); {per_step})",
              executor),
             ("thread hand-off and waiting (the rest)",
              users["fit"] - python - both[call] - executor)]
    print(f"\nfit as users get it, {us(users['fit'])}:\n")
    print("| part | time |")
    print("|---|---|")
    for name, seconds in parts:
        print(f"| {name} | {us(seconds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
