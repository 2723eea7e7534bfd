"""This machine's benchmark report, written by ``python -m bench.run``.

``python -m bench.run`` runs ``bench/bench_workloads.py`` under
pytest-benchmark (full sizes by default), measures this machine's memory
read bandwidth, then :func:`write_report` writes
``REPORT.md``, ``speedup.png``, ``time_per_step.png`` and the raw
``benchmarks.json`` into the output folder (``bench/results`` by default).
``--json FILE`` skips the run and reports on an earlier one
(``python -m bench.report`` is an alias of ``python -m bench.run``). The peers that
could not run (and why) are read from the same JSON.
"""

import datetime
import pathlib
import shutil
import subprocess
import sys

import numpy as np

from bench import machine, plots
from bench.methods import BASELINE, FASTAI, KERAS, SCAN, TORCH_COMPILE, x_reads_per_step
from bench.results_table import (
    TARGETS,
    by_workload,
    fastest,
    fit_method,
    load,
    load_skipped,
    scan_overhead,
)
from bench.suite import drop_round_times, format_time, run_suite
from bench.workloads import FULL

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"


def _ratio(value):
    return "-" if value is None else f"{value:,.1f}x" if value >= 10 else f"{value:,.2f}x"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def workload_sections(table):
    parts = []
    for w, runs in table.items():
        base = runs.get(BASELINE)
        any_run = next(iter(runs.values()))
        sweep = any_run.extra["sweep"]
        label = any_run.extra["label"] + (f", {sweep} learning rates" if sweep else "")
        rows = [(m, format_time(r.median_s), _ratio(base.median_s / r.median_s if base else None),
                 f"{r.steps_per_s:,.0f}", format_time(r.extra["first_call_s"]),
                 f"{r.extra['error']:.1e}", r.rounds)
                for m, r in sorted(runs.items(), key=lambda item: item[1].median_s)]
        parts.append(f"### {w} ({label})\n\n" + _table(
            ("method", "median", "vs torch reference", "steps/s",
             "first call (compile + run)", "error vs float64", "rounds"), rows))
    return "\n\n".join(parts)


def scan_section(table, tuned_table):
    """``fit`` against the hand-written scan, workload by workload."""
    rows = []
    for w, runs in table.items():
        fit = fit_method(runs)
        if fit is None or SCAN not in runs:
            continue
        tuned = scan_overhead(tuned_table, w)
        rows.append((w, fit, format_time(runs[fit].median_s), format_time(runs[SCAN].median_s),
                     _ratio(scan_overhead(table, w)), "-" if tuned is None else _ratio(tuned),
                     format_time(runs[fit].extra["first_call_s"]),
                     format_time(runs[SCAN].extra["first_call_s"])))
    return _table(("workload", "fit as called", "median", "hand-written scan",
                   "overhead vs hand-written scan", "with tune_cpu()", "first call: fit",
                   "first call: scan"), rows)


PEER_FAMILIES = (("hand-written scan", (SCAN,)), ("Keras 3", KERAS),
                 ("torch.compile", TORCH_COMPILE), ("fastai", (FASTAI,)))
FORMS = dict(zip(KERAS + TORCH_COMPILE, ("1 step an execution", "all steps in one execution",
                                        "the step", "the loop unrolled", "torch's scan")))


def peers_section(table):
    """Per workload: ``fit`` and the fastest form of each peer, its median
    with fit's speed-up over it, and its first call (compile included)."""
    header = ["workload", "fit", "fit's first call"]
    for family, _ in PEER_FAMILIES:
        header += [f"{family}: median (fit's speed-up)", "first call"]
    rows = []
    for w, runs in table.items():
        fit = fit_method(runs)
        if fit is None:
            continue
        row = [w, format_time(runs[fit].median_s), format_time(runs[fit].extra["first_call_s"])]
        for _, methods in PEER_FAMILIES:
            peer = fastest(runs, methods)
            if peer is None:
                row += ["-", "-"]
                continue
            form = f", {FORMS[peer]}" if peer in FORMS else ""
            ratio = _ratio(runs[peer].median_s / runs[fit].median_s)
            row += [f"{format_time(runs[peer].median_s)} ({ratio}{form})",
                    format_time(runs[peer].extra["first_call_s"])]
        rows.append(row)
    return _table(header, rows)


def skipped_section(skipped):
    """One line per peer and reason, with the workloads it was skipped on."""
    if not skipped:
        return "Every peer ran."
    grouped = {}
    for s in skipped:
        grouped.setdefault((s["method"], s["reason"]), []).append(s["workload"])
    return "\n".join(f"- **{method}** was skipped ({'; '.join(dict.fromkeys(ws))}): {reason}"
                     for (method, reason), ws in grouped.items())


def bandwidth_section(table, dram_gbs, in_cache_gbs):
    """Large full-batch workloads: the bytes of ``x`` each method's step reads
    (:func:`bench.methods.x_reads_per_step`) over its time."""
    workloads = {w.name: w for w in FULL}
    rows = []
    for w, runs in table.items():
        if w not in in_cache_gbs:
            continue
        for m, r in sorted(runs.items(), key=lambda item: item[1].median_s):
            reads = x_reads_per_step(m, workloads[w]) if w in workloads else 2
            if not reads:  # the moments: x is read once per call, not per step
                rows.append((w, m, format_time(r.step_s), "0 (moments)", "-", "-", "-"))
                continue
            gbs = reads * r.extra["x_bytes"] / r.step_s / 1e9
            read = f"{reads} ({reads * r.extra['x_bytes'] / 2**20:,.0f} MiB)"
            rows.append((w, m, format_time(r.step_s), read, f"{gbs:,.1f}", f"{100 * gbs / in_cache_gbs[w]:.0f}%",
                         f"{100 * gbs / dram_gbs:.0f}%"))
    return _table(("workload", "method", "time per step", "reads of x a step",
                   "effective GB/s (those reads)", "of in-cache read bandwidth",
                   "of DRAM read bandwidth"), rows)


def tuned_section(tuned_table):
    if not tuned_table:
        return ""
    return f"""## With `functional_sgd.tune_cpu()`

The same workloads, in a second process that called `fsgd.tune_cpu()` before
JAX started: CPU programs run on the calling thread instead of a worker (JAX's
async dispatch costs a thread hand-off per call), and XLA:CPU compiles loops
whose step touches under 64 KiB into one kernel (instead of running each
kernel of the step as a task of its dataflow executor). Both are process-wide,
so the library leaves them to the program. Ratios are against the baseline
measured in that same process.

{workload_sections(tuned_table)}
"""


def profile_large(quick=False):
    """The Markdown table of ``bench/investigations/profile_large.py`` (each pass over ``x``
    timed alone), run in a child so its compiled programs stay out of ours."""
    command = [sys.executable, str(ROOT / "bench" / "investigations" / "profile_large.py")]
    done = subprocess.run(command + (["--quick"] if quick else []), cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return "\n".join(line for line in done.stdout.splitlines() if line.startswith("|"))


def profile_section(table):
    if not table:
        return ""
    return f"""### Profile: each pass over `x` alone

`python bench/investigations/profile_large.py` times the two passes of a step on their own
(100 in one compiled loop for JAX, eager for torch), then the whole step.
Where both libraries already run each pass at about the in-cache read speed,
the general path can only win by torch's per-step overhead: the last column,
torch's step over two reads of `x` at in-cache speed, is the largest
speed-up over torch that any step reading `x` twice can reach on this
machine. A target above it needs a step that reads `x` once: the exact MSE
path, or `fit`'s one-pass step (`SpeedPlan.one_pass`, for a loss that is a
mean over rows; `python -m bench.investigations.one_pass` times it against the plain step
and torch). What else was tried is listed in the docs, docs/explanations/time.md,
under "Large full batch".

{table}
"""


def write_report(results, out, *, dram_gbs, bandwidth_bytes, in_cache_gbs, note="",
                 tuned_results=(), profile="", skipped=()):
    table = by_workload(results)
    tuned_table = by_workload(tuned_results)
    info = machine.machine_info()
    info["memory read bandwidth"] = (f"{dram_gbs:.1f} GB/s (a float32 array of "
                                     f"{bandwidth_bytes / 2**30:g} GiB read once by BLAS)")
    info["in-cache read bandwidth"] = ", ".join(
        f"{w}: {g:.1f} GB/s" for w, g in in_cache_gbs.items()) or "-"
    floors = {w: 2 * next(iter(table[w].values())).extra["x_bytes"] / (g * 1e9)
              for w, g in in_cache_gbs.items() if w in table}
    plots.speedup_bars(table, out / "speedup.png",
                       title="functional-sgd against the lesson's torch loop")
    full_batch = [w for w in table if w == "lesson" or w in in_cache_gbs]
    full_batch.sort(key=lambda w: next(iter(table[w].values())).extra["x_bytes"])
    plots.time_per_step(table, full_batch, floors, out / "time_per_step.png",
                        title="Full-batch descent: time per step against data size")
    def shown(target, value):
        if value is None:
            return "-"
        return format_time(value) if target.unit == "s" else f"{value:,.2f} {target.unit}"

    def met(target, value, table):
        why_not = target.not_applicable and target.not_applicable(table)
        if why_not:
            return why_not
        return "-" if value is None else "yes" if target.met(value) else "**no**"

    targets = []
    for target in TARGETS:
        value, tuned = target.measure(table), target.measure(tuned_table)
        goal = f"{'<=' if target.at_most else '>='} {target.goal:g} {target.unit}"
        targets.append((target.text, shown(target, value), met(target, value, table),
                        shown(target, tuned), met(target, tuned, tuned_table), goal))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# functional-sgd benchmark report

Written {stamp} by `python -m bench.run`. Times are medians of warm calls
(compilation is never timed as run time; the first call, compile included, is
its own column); every JAX result is synchronised with the host. Ratios are
measured side by side in one run. Every method's final params are checked
against a float64 NumPy run of the same schedule (column "error vs float64",
max |p - p64| / (1 + |p64|); the suite fails above 1e-3).
{note}
## Machine

{_table(("", ""), info.items())}

## Targets (issues 3 and 15)

Measured as users get it, and in a process that called
`functional_sgd.tune_cpu()` first (see [below](#with-functional_sgdtune_cpu));
each ratio's two sides come from the same process. A peer with several
forms (Keras with one or all steps per execution, torch.compile around the
step or the whole loop) counts by its fastest. A "-" is a case not run
(a peer not installed, or skipped at smoke size).

{_table(("target", "measured", "met", "with tune_cpu()", "met", "goal"), targets)}

![speed-up per workload](speedup.png)

## fit against a hand-written scan

The floor plain XLA gives: `jax.jit` of a `lax.scan` whose step is
`value_and_grad` of the MSE and `p - lr * g`, each step's rows gathered with
`x[idx]` (for the sweep, `jax.vmap` of it over the rates), as any JAX user
writes it (`bench/peers.py`). The overhead is fit's median over the scan's,
measured in the same run; below 1x, fit's own choices (layout, moments)
beat the plain program.

{scan_section(table, tuned_table)}

## Peers

Besides the lesson's torch loop, each workload is run by what a user could
pick instead (`bench/peers.py`), every one replaying the workload's own
schedule so its result is checked against float64 like fit's: the
hand-written scan; Keras 3 on its JAX backend (`model.fit`, `jit_compile=True`,
one step per execution or all of them: Keras's JAX trainer still runs each
jitted step from Python); `torch.compile` around the lesson's step, and
around the whole loop (unrolled up to 100 steps, else torch's prototype
`scan`; the gradient written out, as dynamo does not trace autograd inside a
compiled graph by default); fastai's `Learner` with its `SGD`. The first call
of a compiled peer is its compile time (torch's with its compile caches off,
and the first in a process also loads inductor). Peers that run each step
from Python skip the 200 000-step stochastic workload.

{skipped_section(skipped)}

Side by side, each peer by its fastest form (named after the ratio):

{peers_section(table)}

## Workloads

{workload_sections(table)}

{tuned_section(tuned_table)}
## Large full batch against memory bandwidth

A plain full-batch step of the linear model reads `x` twice: `x @ a`
forward and `x^T r` backward. `fit`'s one-pass step (`SpeedPlan.one_pass`,
taken by `linear_mse` on large row-major data) reads it once, in row blocks
that stay in cache; the exact MSE path reads it only to build its moments.
"Effective GB/s" counts the reads of `x` a step makes;
the in-cache figure is BLAS re-reading an array of the workload's shape
right after reading it (arrays that fit in the last-level cache are read at
that speed, not at DRAM's).

{bandwidth_section(table, dram_gbs, in_cache_gbs)}

![time per step against data size](time_per_step.png)

{profile_section(profile)}
## Reproduce

```bash
pip install -e ".[bench]" && python -m bench.run
```

The same workloads on every device JAX and torch can see:
`python -m bench.run --devices all` writes [accelerators.md](accelerators.md).
"""
    (out / "REPORT.md").write_text(text)
    return text


def report_run(args):
    """Runs the suite (or reads ``args.json``) and writes the report into
    ``args.out``; ``args``: ``python -m bench.run``'s options. The second run,
    under ``tune_cpu()``, is made only where JAX's default backend is the CPU
    (the settings are XLA:CPU's)."""
    import jax

    if args.json is None and jax.default_backend() != "cpu" and not args.no_tuned:
        print(f"the default backend is {jax.default_backend()}: no run under tune_cpu()")
        args.no_tuned = True
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "benchmarks.json"
    tuned_path = args.out / "benchmarks_tune_cpu.json"
    if args.json is None:
        for path, tuned in ((json_path, False), (tuned_path, True)):
            if tuned and args.no_tuned:
                continue
            code = run_suite(ROOT, path, args.size, args.select, tuned=tuned)
            if code != 0:
                raise subprocess.CalledProcessError(code, f"the suite (tuned={tuned})")
    else:
        for given, path in ((args.json, json_path), (args.tuned_json, tuned_path)):
            if given is not None and given.resolve() != path.resolve():
                shutil.copyfile(given, path)
    run_tuned = not args.no_tuned and (args.json is None or args.tuned_json is not None)
    tuned_results = ()
    if run_tuned:
        drop_round_times(tuned_path)
        tuned_results = load(tuned_path)
    drop_round_times(json_path)
    results = load(json_path)
    in_cache = {}
    for r in results:
        if r.extra["large"] and r.workload not in in_cache:
            array = np.ones((r.extra["n"], r.extra["d"]), np.float32)
            in_cache[r.workload] = machine.in_cache_read_bandwidth(array)
    write_report(results, args.out, note=f"\n{args.note}\n" if args.note else "",
                 dram_gbs=machine.memory_read_bandwidth(args.bandwidth_bytes),
                 bandwidth_bytes=args.bandwidth_bytes,
                 in_cache_gbs=in_cache, tuned_results=tuned_results,
                 profile="" if args.no_profile else profile_large(quick=args.size == "smoke"),
                 skipped=load_skipped(json_path))
    print(f"wrote {args.out / 'REPORT.md'}")
    return 0



if __name__ == "__main__":  # the old command, kept as an alias
    from bench import run

    sys.exit(run.main(sys.argv[1:]))
